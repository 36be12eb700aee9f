/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * DNS over UDP port 53 (source or destination): queries by QTYPE, responses by
 * RCODE, query -> response latency, pending queries for the agent to expire as
 * unanswered, and per-name query and failure counts.
 *
 * Only the 12-byte header and the first question are read, from the UDP
 * payload (l4->hdr_end) up to the end of the IP packet (l4->limit): Ethernet
 * padding or a trailer is never part of a message. A message is malformed, and
 * counted as such and nothing else, when the header is truncated, a query does
 * not carry exactly one question (a response at most one), the section counts
 * cannot fit the bytes left (a question takes at least 5, a record at least
 * 11), a label runs past the packet or the name past 255 bytes, or the first
 * question holds a compression pointer or a reserved label type (a pointer
 * there could only point back into the header, so following none is also why
 * no loop can happen here).
 *
 * The name is copied into per-CPU scratch memory (too big for the stack), ASCII
 * upper case folded to lower case eight bytes at a time, and zero-padded: that
 * is the DNS_NAMES key. Folding here, not in the agent, keeps resolvers that
 * randomise case (DNS 0x20) from filling the table with one name's spellings.
 */
#ifndef SENNET_DNS_H
#define SENNET_DNS_H

#include "sennet_dns.h"

#define DNS_HDR_LEN 12
#define DNS_QR 0x8000
#define DNS_MIN_QUESTION 5 /* root name (1) + QTYPE (2) + QCLASS (2) */
#define DNS_MIN_RR 11      /* root name (1) + TYPE, CLASS (4) + TTL (4) + RDLENGTH (2) */
#define DNS_MAX_LABELS 8 /* 255 bytes hold at most 127 labels and the root */
#define DNS_WORDS (SENNET_DNS_NAME_MAX / 8)

struct sennet_dns_scratch {
	__u64 words[DNS_WORDS]; /* the QNAME, then DNS_NAMES' key in place */
	__u32 len;              /* the QNAME's length, through memory (see dns_parse) */
	__u32 off;              /* l4->hdr_end and l4->limit, through memory */
	__u32 limit;
	__u32 _pad;
};

SENNET_PERCPU_ARRAY(DNS_COUNTERS, __u32, __u64, SENNET_DNS_COUNTERS);
SENNET_LRU_HASH(DNS_PENDING, struct sennet_dns_pending_key, struct sennet_dns_pending,
		SENNET_DNS_PENDING_ENTRIES);
SENNET_LRU_HASH(DNS_NAMES, struct sennet_dns_name, struct sennet_dns_name_count,
		SENNET_DNS_NAME_ENTRIES);
SENNET_SCRATCH(DNS_SCRATCH, struct sennet_dns_scratch);

/* Map accessors, one branch per dialect (see compat.h for why). */
#ifdef SENNET_BCC
static __always_inline __u64 *dns_counter_at(__u32 *key) { return DNS_COUNTERS.lookup(key); }
static __always_inline struct sennet_dns_scratch *dns_scratch(__u32 *key) { return DNS_SCRATCH.lookup(key); }
static __always_inline struct sennet_dns_pending *dns_pending_of(struct sennet_dns_pending_key *k) { return DNS_PENDING.lookup(k); }
static __always_inline void dns_pending_put(struct sennet_dns_pending_key *k, struct sennet_dns_pending *v) { DNS_PENDING.update(k, v); }
static __always_inline void dns_pending_drop(struct sennet_dns_pending_key *k) { DNS_PENDING.delete(k); }
static __always_inline struct sennet_dns_name_count *dns_name_of(void *name) { return DNS_NAMES.lookup(name); }
static __always_inline void dns_name_add(void *name, struct sennet_dns_name_count *v) { DNS_NAMES.insert(name, v); }
#else
static __always_inline __u64 *dns_counter_at(__u32 *key) { return bpf_map_lookup_elem(&DNS_COUNTERS, key); }
static __always_inline struct sennet_dns_scratch *dns_scratch(__u32 *key) { return bpf_map_lookup_elem(&DNS_SCRATCH, key); }
static __always_inline struct sennet_dns_pending *dns_pending_of(struct sennet_dns_pending_key *k) { return bpf_map_lookup_elem(&DNS_PENDING, k); }
static __always_inline void dns_pending_put(struct sennet_dns_pending_key *k, struct sennet_dns_pending *v) { bpf_map_update_elem(&DNS_PENDING, k, v, BPF_ANY); }
static __always_inline void dns_pending_drop(struct sennet_dns_pending_key *k) { bpf_map_delete_elem(&DNS_PENDING, k); }
static __always_inline struct sennet_dns_name_count *dns_name_of(void *name) { return bpf_map_lookup_elem(&DNS_NAMES, name); }
static __always_inline void dns_name_add(void *name, struct sennet_dns_name_count *v) { bpf_map_update_elem(&DNS_NAMES, name, v, BPF_NOEXIST); }
#endif

static __always_inline void dns_count(__u32 slot)
{
	__u64 *c = dns_counter_at(&slot);

	if (c)
		*c += 1;
}

static __always_inline __u32 dns_qtype_slot(__u16 qtype)
{
	switch (qtype) {
	case 1: return SENNET_DNS_Q_A;
	case 2: return SENNET_DNS_Q_NS;
	case 5: return SENNET_DNS_Q_CNAME;
	case 6: return SENNET_DNS_Q_SOA;
	case 12: return SENNET_DNS_Q_PTR;
	case 15: return SENNET_DNS_Q_MX;
	case 16: return SENNET_DNS_Q_TXT;
	case 28: return SENNET_DNS_Q_AAAA;
	case 33: return SENNET_DNS_Q_SRV;
	case 64: return SENNET_DNS_Q_SVCB;
	case 65: return SENNET_DNS_Q_HTTPS;
	case 255: return SENNET_DNS_Q_ANY;
	}
	return SENNET_DNS_Q_OTHER;
}

static __always_inline __u32 dns_rcode_slot(__u16 rcode)
{
	switch (rcode) {
	case 0: return SENNET_DNS_R_NOERROR;
	case 2: return SENNET_DNS_R_SERVFAIL;
	case 3: return SENNET_DNS_R_NXDOMAIN;
	case 5: return SENNET_DNS_R_REFUSED;
	}
	return SENNET_DNS_R_OTHER;
}

/* Length of the wire-format QNAME at the start of `name` (root byte included),
 * of which `avail` bytes are the packet's; 0 when it is malformed. */
static __always_inline __u32 dns_name_len(const __u8 *name, __u64 avail)
{
	__u32 pos = 0;

	for (__u32 i = 0; i < DNS_MAX_LABELS; i++) {
		if (pos >= avail)
			return 0; /* a label runs past the packet, or the name past 255 bytes */
		__u8 len = name[pos & (SENNET_DNS_NAME_MAX - 1)];

		if (len == 0)
			return pos + 1;
		if (len & 0xC0)
			return 0; /* a compression pointer (or a reserved label type) */
		pos += (__u32)len + 1;
	}
	return 0;
}

/* Fold A-Z to a-z in place, eight bytes at a time, and hash the result
 * (FNV-1a over words). Length bytes are at most 63, below 'A', so they stay;
 * the zero padding stays zero. No branch: the verifier walks it once. */
static __always_inline __u32 dns_fold_name(struct sennet_dns_scratch *s)
{
	__u64 hash = 0xcbf29ce484222325ULL;

	for (__u32 k = 0; k < DNS_WORDS; k++) {
		__u64 w = s->words[k];
		__u64 low7 = w & 0x7f7f7f7f7f7f7f7fULL;
		__u64 ge_a = low7 + 0x3f3f3f3f3f3f3f3fULL; /* high bit set where byte >= 'A' */
		__u64 gt_z = low7 + 0x2525252525252525ULL; /* high bit set where byte > 'Z' */
		__u64 upper = ge_a & ~gt_z & ~w & 0x8080808080808080ULL;

		w |= upper >> 2;
		s->words[k] = w;
		hash = (hash ^ w) * 0x100000001b3ULL;
	}
	return (__u32)(hash ^ (hash >> 32));
}

static __always_inline void dns_name_count(struct sennet_dns_scratch *s, int failure)
{
	struct sennet_dns_name_count *c = dns_name_of(s);

	if (!c) {
		struct sennet_dns_name_count zero = {};

		dns_name_add(s, &zero);
		c = dns_name_of(s);
		if (!c)
			return;
	}
	if (failure)
		__sync_fetch_and_add(&c->failures, 1);
	else
		__sync_fetch_and_add(&c->queries, 1);
}

/* The message at l4->hdr_end. Returns 1 when parsed, 0 when malformed. Under
 * libbpf run as a global function (dns_parse_tc/_xdp below, one per hook),
 * checked by the verifier once (see emit()). */
static __always_inline int dns_parse(void *ctx, const int hook, struct sennet_event *ev,
				     struct sennet_l4 *l4, __u64 now)
{
	/* Copied with pkt_load() rather than read in place: no packet
	 * pointer, so bcc's compile of the inlined whole keeps skb->data reads
	 * where the verifier accepts them. */
	__u8 h[DNS_HDR_LEN];

	__u32 zero = 0;
	struct sennet_dns_scratch *s = dns_scratch(&zero);

	if (!ev || !l4 || !s)
		return 0; /* never: the scratch array always has its one entry */
	/* The offsets go through memory too. Where they come from (the caller's
	 * many parse paths) then never matters to what follows: inlined (bcc),
	 * the verifier checks the rest once, not once per way of getting here. */
	*(volatile __u32 *)&s->off = l4->hdr_end;
	*(volatile __u32 *)&s->limit = l4->limit;
	__u32 off = *(volatile __u32 *)&s->off;
	__u32 limit = *(volatile __u32 *)&s->limit;

	if (off > 0xFFFF || limit > 0x10000 || limit < off + DNS_HDR_LEN)
		return 0; /* truncated header */
	if (pkt_load(ctx, hook, off, h, DNS_HDR_LEN) < 0)
		return 0;

	__u16 id = be16(&h[0]);
	__u16 flags = be16(&h[2]);
	__u32 qd = be16(&h[4]);
	__u32 records = (__u32)be16(&h[6]) + be16(&h[8]) + be16(&h[10]);
	int response = (flags & DNS_QR) != 0;

	if (response ? qd > 1 : qd != 1)
		return 0;
	off += DNS_HDR_LEN;
	__u64 left = limit - off; /* 64-bit: the verifier bounds what it compares */

	if ((__u64)qd * DNS_MIN_QUESTION + (__u64)records * DNS_MIN_RR > left)
		return 0; /* the counts cannot fit the bytes left */

	__u32 hash = 0;
	__u16 qtype = 0;

	if (qd == 1) {
		__u64 avail = left < SENNET_DNS_NAME_MAX - 1 ? left : SENNET_DNS_NAME_MAX - 1;

		if (avail < DNS_MIN_QUESTION)
			return 0;
		if (pkt_load(ctx, hook, off, s->words, avail) < 0)
			return 0;
		/* The length goes through memory: every exit of the label loop then
		 * reaches what follows as one state, which the verifier checks once
		 * instead of once per possible label count. */
		*(volatile __u32 *)&s->len = dns_name_len((const __u8 *)s->words, avail);
		__u64 len = *(volatile __u32 *)&s->len;

		if (len == 0 || len > SENNET_DNS_NAME_MAX - 1)
			return 0;
		/* QTYPE and QCLASS, then room for the records the header announces. */
		if (len + 4 > left || (__u64)records * DNS_MIN_RR > left - len - 4)
			return 0;
		if (pkt_load(ctx, hook, off + len, h, 4) < 0)
			return 0;
		qtype = be16(&h[0]);
		/* Reload the name alone: the key is zero-padded past it. The size is
		 * rebuilt out of the compiler's sight, so the register the helper gets
		 * is the one the verifier saw bounded to 1..256. */
		asm volatile("" : "+r"(len));
		__u64 n = ((len - 1) & (SENNET_DNS_NAME_MAX - 1)) + 1;

		__builtin_memset(s->words, 0, sizeof(s->words));
		if (pkt_load(ctx, hook, off, s->words, n) < 0)
			return 0;
		hash = dns_fold_name(s);
	}

	struct sennet_dns_pending_key key = {};

	key.id = id;
	key.ip_version = ev->ip_version;
	if (!response) {
		struct sennet_dns_pending p = {};

		dns_count(dns_qtype_slot(qtype));
		__builtin_memcpy(&key.client, &ev->saddr, sizeof(key.client));
		key.client_port = ev->sport;
		p.ts_ns = now;
		p.name_hash = hash;
		p.qtype = qtype;
		dns_pending_put(&key, &p);
		dns_name_count(s, 0);
		return 1;
	}

	__u16 rcode = flags & 0x000F;

	dns_count(dns_rcode_slot(rcode));
	__builtin_memcpy(&key.client, &ev->daddr, sizeof(key.client));
	key.client_port = ev->dport;
	struct sennet_dns_pending *p = dns_pending_of(&key);

	/* Same client, port and id, and (when the response repeats it) the same question. */
	if (p && (qd == 0 || (p->name_hash == hash && p->qtype == qtype))) {
		__u64 sent = p->ts_ns;

		dns_pending_drop(&key);
		dns_count(SENNET_DNS_MATCHED);
		if (now >= sent)
			hist_observe(SENNET_HIST_DNS_LATENCY, now - sent);
	}
	if (rcode != 0 && qd == 1)
		dns_name_count(s, 1);
	return 1;
}

/* One global function per hook (a global function's context argument has
 * one type), both around the same dns_parse() body. */
#ifndef SENNET_BCC
__attribute__((noinline)) int dns_parse_tc(struct __sk_buff *skb, struct sennet_event *ev,
					   struct sennet_l4 *l4, __u64 now)
{
	return dns_parse(skb, SENNET_HOOK_TC, ev, l4, now);
}

__attribute__((noinline)) int dns_parse_xdp(struct xdp_md *xdp, struct sennet_event *ev,
					    struct sennet_l4 *l4, __u64 now)
{
	return dns_parse(xdp, SENNET_HOOK_XDP, ev, l4, now);
}
#endif

static __always_inline void dns_observe(void *ctx, const int hook, const struct sennet_event *ev,
					const struct sennet_l4 *l4, __u64 now)
{
	int parsed;

	if (ev->sport != SENNET_DNS_PORT && ev->dport != SENNET_DNS_PORT)
		return;
	dns_count(SENNET_DNS_SEEN);
#ifdef SENNET_BCC
	parsed = dns_parse(ctx, hook, (struct sennet_event *)ev, (struct sennet_l4 *)l4, now);
#else
	if (hook == SENNET_HOOK_XDP)
		parsed = dns_parse_xdp(ctx, (struct sennet_event *)ev, (struct sennet_l4 *)l4, now);
	else
		parsed = dns_parse_tc(ctx, (struct sennet_event *)ev, (struct sennet_l4 *)l4, now);
#endif
	if (!parsed)
		dns_count(SENNET_DNS_MALFORMED);
}

#endif /* SENNET_DNS_H */
