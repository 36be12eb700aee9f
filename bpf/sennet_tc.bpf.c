// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Sennet TC data plane: counts packets and bytes per interface and direction,
 * and reports large packets and malformed or hostile headers through a ring
 * buffer. The receive side can run at XDP instead (sennet_xdp): the same
 * handle(), given the XDP context (packet.h: SENNET_HOOK_*).
 *
 * The programs observe only. Every TC path returns TC_ACT_UNSPEC, so the packet
 * continues exactly as if no filter were attached (any later filter on the
 * same hook still runs); the XDP program always returns XDP_PASS. Headers are read in place from the packet's linear
 * part when they are there (the common case, no helper call); otherwise they
 * are copied with bpf_skb_load_bytes, which works on non-linear skbs without
 * pulling them (pulling would change the skb's layout): an IPv4 header and the
 * TCP/UDP header after it in one call (a frame sent through a PACKET_MMAP ring
 * arrives with only its Ethernet header linear). Either way "too short" is one
 * check per header.
 *
 * Counts are what crossed the wire, the same as the interface's own counters
 * on a NIC: an outer VLAN tag the stack keeps in skb metadata (moved there at
 * ingress, or still to be inserted by the driver at egress) is counted, and a
 * GRO/GSO aggregate counts as its segments, each with its own copy of the
 * headers. Headers inside an IP packet are read only within the IP packet's
 * own length: Ethernet padding or a trailer is never parsed as a header.
 */
#include "compat.h"
#include "sennet_tc.h"
#include "packet.h"

/* large_packet fires for frames strictly longer than this (bytes on the wire;
 * for an aggregate, its largest segment). */
SENNET_TUNABLE(__u32, cfg_large_packet_bytes, 1514);
/* Which features run (sennet_tc.h: SENNET_FEAT_*); the rest cost nothing. */
SENNET_TUNABLE(__u32, cfg_features, SENNET_FEAT_ALL);

static __always_inline int feature_on(__u32 feature)
{
	return (cfg_features & feature) != 0;
}

SENNET_PERCPU_ARRAY(COUNTERS, __u32, struct sennet_counter, SENNET_COUNTER_SLOTS);
/* ifindex -> slot (0 = not registered). An array, not a hash: the lookup is
 * inlined by the verifier, and user space reads it whole through mmap. */
SENNET_MMAP_ARRAY(IFSLOTS, __u32, __u32, SENNET_IFINDEX_LIMIT);
SENNET_PERCPU_ARRAY(EV_COUNTS, __u32, __u64, SENNET_EV_KINDS); /* detected, by kind */
SENNET_PERCPU_ARRAY(RB_DROPS, __u32, __u64, SENNET_EV_KINDS);  /* ring full, by kind */
SENNET_RINGBUF(EVENTS);
/* Latency histograms (sennet_tc.h: SENNET_HIST_*), filled by the features. */
SENNET_PERCPU_ARRAY(HISTOGRAMS, __u32, __u64, SENNET_HISTS * SENNET_HIST_SLOTS);

/* Map accessors, one branch per dialect (see compat.h for why). */
#ifdef SENNET_BCC
static __always_inline __u32 *ifslot_of(__u32 *ifindex) { return IFSLOTS.lookup(ifindex); }
static __always_inline struct sennet_counter *counter_at(__u32 *key) { return COUNTERS.lookup(key); }
static __always_inline __u64 *rb_drops_at(__u32 *kind) { return RB_DROPS.lookup(kind); }
static __always_inline __u64 *ev_count_at(__u32 *kind) { return EV_COUNTS.lookup(kind); }
static __always_inline void *event_reserve(void) { return EVENTS.ringbuf_reserve(sizeof(struct sennet_event)); }
static __always_inline void event_submit(void *e) { EVENTS.ringbuf_submit(e, 0); }
static __always_inline __u64 *hist_at(__u32 *key) { return HISTOGRAMS.lookup(key); }
#else
static __always_inline __u32 *ifslot_of(__u32 *ifindex) { return bpf_map_lookup_elem(&IFSLOTS, ifindex); }
static __always_inline struct sennet_counter *counter_at(__u32 *key) { return bpf_map_lookup_elem(&COUNTERS, key); }
static __always_inline __u64 *rb_drops_at(__u32 *kind) { return bpf_map_lookup_elem(&RB_DROPS, kind); }
static __always_inline __u64 *ev_count_at(__u32 *kind) { return bpf_map_lookup_elem(&EV_COUNTS, kind); }
static __always_inline void *event_reserve(void) { return bpf_ringbuf_reserve(&EVENTS, sizeof(struct sennet_event), 0); }
static __always_inline void event_submit(void *e) { bpf_ringbuf_submit(e, 0); }
static __always_inline __u64 *hist_at(__u32 *key) { return bpf_map_lookup_elem(&HISTOGRAMS, key); }
#endif

/* Count the packet in its interface's slot; returns the slot. */
static __always_inline __u32 count(__u32 ifindex, __u32 dir, __u32 segs, __u32 bytes)
{
	__u32 slot = 0;
	__u32 *found = ifslot_of(&ifindex);

	if (found && *found < SENNET_MAX_IFACES)
		slot = *found;
	__u32 key = slot * 2 + dir;
	struct sennet_counter *c = counter_at(&key);

	if (c) {
		c->packets += segs;
		c->bytes += bytes;
	}
	return slot;
}

/* One duration into a latency histogram (per CPU, no atomics). */
static __always_inline void hist_observe(__u32 hist, __u64 ns)
{
	__u32 key = hist * SENNET_HIST_SLOTS + hist_bucket(ns);
	__u64 *slot = hist_at(&key);

	if (slot)
		*slot += 1;
	key = hist * SENNET_HIST_SLOTS + SENNET_HIST_BUCKETS;
	slot = hist_at(&key);
	if (slot)
		*slot += ns;
}

/* The L4 header from `pre` (bytes at `off` already copied by the IPv4 parser,
 * `pre_len` of them) when it holds `len` bytes, else from the packet. Either
 * way bounded by the IP packet's end. */
static __always_inline const __u8 *l4_header(void *ctx, const int hook, __u32 off, __u32 len,
					     __u32 limit, const __u8 *pre, __u32 pre_len, __u8 *buf)
{
	if (pre && len <= pre_len) {
		if (off + len > limit)
			return 0;
		return pre;
	}
	return inner(ctx, hook, off, len, limit, buf);
}

/* Parse the L4 header at `off` of an IP packet ending at `limit`. Sets
 * l4->hdr_end to the end of the TCP/UDP header: the headers every segment of an
 * aggregate repeats (and where a DNS message starts). `pre`: see l4_header(). */
static __always_inline __u32 parse_l4(void *ctx, const int hook, __u32 off, __u32 limit, __u8 proto,
				      struct sennet_event *ev, struct sennet_l4 *l4,
				      const __u8 *pre, __u32 pre_len)
{
	__u8 buf[20];
	const __u8 *h;

	if (proto == PROTO_TCP) {
		h = l4_header(ctx, hook, off, 20, limit, pre, pre_len, buf);
		if (!h)
			return KIND(SENNET_EV_TRUNCATED_L4);
		l4->l4_off = off;
		l4->limit = limit;
		l4->hdr_end = off + ((__u32)(h[12] >> 4) << 2);
		l4->seq = be32(&h[4]);
		l4->ack = be32(&h[8]);
		l4->window = be16(&h[14]);
		ev->sport = be16(&h[0]);
		ev->dport = be16(&h[2]);
		__u8 f = h[13];
		__u32 kinds = 0;

		ev->tcp_flags = f;
		if (f == 0)
			kinds |= KIND(SENNET_EV_TCP_NULL);
		if ((f & (TCPF_SYN | TCPF_FIN)) == (TCPF_SYN | TCPF_FIN))
			kinds |= KIND(SENNET_EV_TCP_SYN_FIN);
		if ((f & (TCPF_SYN | TCPF_RST)) == (TCPF_SYN | TCPF_RST))
			kinds |= KIND(SENNET_EV_TCP_SYN_RST);
		if ((f & (TCPF_FIN | TCPF_PSH | TCPF_URG)) == (TCPF_FIN | TCPF_PSH | TCPF_URG))
			kinds |= KIND(SENNET_EV_TCP_XMAS);
		return kinds;
	}
	if (proto == PROTO_UDP) {
		h = l4_header(ctx, hook, off, 8, limit, pre, pre_len, buf);
		if (!h)
			return KIND(SENNET_EV_TRUNCATED_L4);
		l4->l4_off = off;
		l4->limit = limit;
		l4->hdr_end = off + 8;
		ev->sport = be16(&h[0]);
		ev->dport = be16(&h[2]);
		return 0;
	}
	if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) {
		/* type, code, checksum: the part every ICMP message has */
		if (!l4_header(ctx, hook, off, 4, limit, pre, pre_len, buf))
			return KIND(SENNET_EV_TRUNCATED_L4);
	}
	return 0;
}

/* Bytes the IPv4 parser copies in one helper call when the IP header is not in
 * the skb's linear part: an option-less IPv4 header and a TCP header without
 * options. A frame written through a PACKET_MMAP ring (and any skb whose head
 * holds only the Ethernet header) then pays one bpf_skb_load_bytes, not two. */
#define IPV4_PRELOAD 40

static __always_inline __u32 parse_ipv4(void *ctx, const int hook, __u32 off, struct sennet_event *ev,
				       struct sennet_l4 *l4)
{
	__u8 buf[IPV4_PRELOAD];
	const __u8 *ip;
	__u32 pre_len = 0; /* bytes after the IP header already in buf */
	void *data = pkt_data(ctx, hook);

	if (off <= 255 && data + off + 20 <= pkt_data_end(ctx, hook)) {
		ip = (const __u8 *)data + off;
	} else if (pkt_len(ctx, hook) >= off + IPV4_PRELOAD) {
		if (pkt_load(ctx, hook, off, buf, IPV4_PRELOAD) < 0)
			return KIND(SENNET_EV_TRUNCATED_L3);
		ip = buf;
		pre_len = IPV4_PRELOAD - 20;
	} else {
		ip = header(ctx, hook, off, 20, buf);
	}
	if (!ip)
		return KIND(SENNET_EV_TRUNCATED_L3);

	__u32 kinds = 0;
	__u32 ihl = ip[0] & 0x0f;
	__u32 tot = be16(&ip[2]);

	ev->ip_version = 4;
	ev->l4_proto = ip[9];
	__builtin_memcpy(&ev->saddr.v4, &ip[12], 4);
	__builtin_memcpy(&ev->daddr.v4, &ip[16], 4);
	if (ev->saddr.v4 == ev->daddr.v4)
		kinds |= KIND(SENNET_EV_LAND);
	if (ihl < 5)
		return kinds | KIND(SENNET_EV_IPV4_BAD_IHL);
	__u32 limit = pkt_len(ctx, hook);

	/* A GSO super-packet (BIG TCP) may carry tot_len 0 by design. */
	if (tot > limit - off || (tot < ihl * 4 && pkt_gso_segs(ctx, hook) <= 1))
		kinds |= KIND(SENNET_EV_IPV4_BAD_LEN);
	else if (tot >= ihl * 4)
		limit = off + tot; /* what follows the IP packet is padding */
	if (be16(&ip[6]) & 0x1fff)
		return kinds; /* a later fragment: no L4 header here */
	/* The copy holds the L4 header only after an option-less IP header. */
	if (ihl != 5)
		pre_len = 0;
	return kinds | parse_l4(ctx, hook, off + ihl * 4, limit, ip[9], ev, l4, buf + 20, pre_len);
}

static __always_inline __u32 parse_ipv6(void *ctx, const int hook, __u32 off, struct sennet_event *ev,
				       struct sennet_l4 *l4)
{
	__u8 buf[40];
	const __u8 *ip = header(ctx, hook, off, 40, buf);

	if (!ip)
		return KIND(SENNET_EV_TRUNCATED_L3);

	__u32 kinds = 0;
	__u8 nh = ip[6];
	__u32 plen = be16(&ip[4]);
	/* Payload length 0 is a jumbogram or a BIG TCP aggregate: the frame bounds it. */
	__u32 limit = plen ? off + 40 + plen : pkt_len(ctx, hook);

	ev->ip_version = 6;
	__builtin_memcpy(ev->saddr.v6, &ip[8], 16);
	__builtin_memcpy(ev->daddr.v6, &ip[24], 16);
	if (same_v6(&ip[8], &ip[24]))
		kinds |= KIND(SENNET_EV_LAND);
	off += 40;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u8 xbuf[4];
		const __u8 *x;

		if (nh == V6_HOPOPTS || nh == V6_ROUTING || nh == V6_DSTOPTS) {
			x = inner(ctx, hook, off, 2, limit, xbuf);
			if (!x)
				return kinds | KIND(SENNET_EV_TRUNCATED_L3);
			nh = x[0];
			off += ((__u32)x[1] + 1) * 8;
		} else if (nh == V6_FRAGMENT) {
			x = inner(ctx, hook, off, 4, limit, xbuf);
			if (!x)
				return kinds | KIND(SENNET_EV_TRUNCATED_L3);
			nh = x[0];
			off += 8;
			if (be16(&x[2]) & 0xfff8) {
				ev->l4_proto = nh;
				return kinds; /* a later fragment: no L4 header here */
			}
		} else {
			break;
		}
	}
	ev->l4_proto = nh;
	return kinds | parse_l4(ctx, hook, off, limit, nh, ev, l4, 0, 0);
}

static __always_inline __u32 parse(void *ctx, const int hook, struct sennet_event *ev,
				   struct sennet_l4 *l4)
{
	__u8 buf[ETH_HDR_LEN];
	const __u8 *eth = header(ctx, hook, 0, ETH_HDR_LEN, buf);

	if (!eth)
		return 0; /* not even an Ethernet header: nothing to classify */

	__u32 off = ETH_HDR_LEN;
	__u16 proto = be16(&eth[12]);

#pragma unroll
	for (int i = 0; i < 2; i++) {
		__u8 tbuf[4];
		const __u8 *tag;

		if (proto != ETHP_8021Q && proto != ETHP_8021AD)
			break;
		tag = header(ctx, hook, off, 4, tbuf);
		if (!tag)
			return KIND(SENNET_EV_TRUNCATED_L3);
		if (i == 0)
			l4->vlan_id = be16(&tag[0]) & 0x0fff;
		proto = be16(&tag[2]);
		off += 4;
		ev->vlan_tags += 1;
	}
	ev->eth_proto = proto;
	if (proto == ETHP_IPV4)
		return parse_ipv4(ctx, hook, off, ev, l4);
	if (proto == ETHP_IPV6)
		return parse_ipv6(ctx, hook, off, ev, l4);
	return 0;
}

/* Under libbpf a global function: the verifier checks it once, on its own,
 * rather than once for every parse outcome that reaches it (on the host kernel
 * 1.9 s -> 0.5 s per program; it matters for the appliance's cold start). bcc
 * keeps it inline. Only packets that raise an event pay the call. */
#ifdef SENNET_BCC
static __always_inline int emit(struct sennet_event *ev, __u32 kinds)
#else
__attribute__((noinline)) int emit(struct sennet_event *ev, __u32 kinds)
#endif
{
	if (!ev)
		return 0;
#pragma unroll
	for (__u32 k = 1; k < SENNET_EV_KINDS; k++) {
		if (!(kinds & KIND(k)))
			continue;

		__u32 key = k;
		__u64 *seen = ev_count_at(&key);

		if (seen)
			*seen += 1;

		struct sennet_event *e = event_reserve();

		if (!e) {
			__u64 *drops = rb_drops_at(&key);

			if (drops)
				*drops += 1;
			continue;
		}
		__builtin_memcpy(e, ev, sizeof(struct sennet_event));
		e->kind = k;
		event_submit(e);
	}
	return 0;
}

/* The features after the counters: each header holds its maps, their
 * accessors and one entry point that handle() calls. */
#include "flows.h"
#include "tcp_health.h"
#include "dns.h"

/* What a program returns to let the packet go on unchanged: at TC "no verdict"
 * (a later filter still runs), at XDP "pass to the stack". */
static __always_inline int pass(const int hook)
{
	return hook == SENNET_HOOK_XDP ? XDP_PASS : SENNET_TC_ACT_UNSPEC;
}

/* Flows, then TCP health or DNS: everything after the counters and events. */
static __always_inline void features(void *ctx, const int hook, struct sennet_event *ev,
				     struct sennet_l4 *l4, __u32 segs, __u32 bytes, __u64 now)
{
	if (!ev->ip_version)
		return;

	struct sennet_flow *flow = 0;

	if (feature_on(SENNET_FEAT_FLOWS))
		flow = flow_account(ev, l4, segs, bytes, now);
	if (ev->l4_proto == PROTO_TCP && l4->l4_off) {
		if (feature_on(SENNET_FEAT_TCP))
			tcp_observe(ctx, hook, ev, l4, flow, segs, now);
	} else if (ev->l4_proto == PROTO_UDP && l4->l4_off) {
		if (feature_on(SENNET_FEAT_DNS))
			dns_observe(ctx, hook, ev, l4, now);
	}
}

/* Features that run after the counters (flows, TCP, DNS): none, and the
 * packet skips them (under bcc, the tail call) and the clock read. */
#define SENNET_FEAT_AFTER (SENNET_FEAT_FLOWS | SENNET_FEAT_TCP | SENNET_FEAT_DNS)

#ifdef SENNET_BCC
/* bcc inlines every function, and the verifier then walks the features once
 * for every way the parser can end (VLAN tags, IPv4 or IPv6, extension
 * headers): past its one-million-instruction limit. So under bcc the features
 * are a program of their own, reached by a tail call with their arguments in
 * per-CPU scratch memory, and verified once. libbpf gets the same effect from
 * global functions, checked once each (see emit()). If the tail call cannot
 * be made (the slot is empty), the packet is still counted: only the features
 * miss it. A tail call stays within one program type, so TC and XDP each have
 * their own target and their own program array. */
struct sennet_feature_args {
	struct sennet_event ev;
	struct sennet_l4 l4;
	__u64 now;
	__u32 segs;
	__u32 bytes;
};

BPF_PROG_ARRAY(FEATURES, 1);
BPF_PROG_ARRAY(FEATURES_XDP, 1);
SENNET_SCRATCH(FEATURE_ARGS, struct sennet_feature_args);

static __always_inline struct sennet_feature_args *feature_args(void)
{
	__u32 zero = 0;

	return FEATURE_ARGS.lookup(&zero);
}

static __always_inline void run_features(void *ctx, const int hook, struct sennet_event *ev,
					 struct sennet_l4 *l4, __u32 segs, __u32 bytes, __u64 now)
{
	if (!feature_on(SENNET_FEAT_AFTER))
		return;

	struct sennet_feature_args *a = feature_args();

	if (!a || !ev->ip_version)
		return;
	__builtin_memcpy(&a->ev, ev, sizeof(*ev));
	__builtin_memcpy(&a->l4, l4, sizeof(*l4));
	a->now = now;
	a->segs = segs;
	a->bytes = bytes;
	if (hook == SENNET_HOOK_XDP)
		FEATURES_XDP.call(ctx, 0);
	else
		FEATURES.call(ctx, 0);
}

static __always_inline int features_entry(void *ctx, const int hook)
{
	struct sennet_feature_args *a = feature_args();

	if (a)
		features(ctx, hook, &a->ev, &a->l4, a->segs, a->bytes, a->now);
	return pass(hook);
}

int sennet_features(struct __sk_buff *skb)
{
	return features_entry(skb, SENNET_HOOK_TC);
}

int sennet_features_xdp(struct xdp_md *ctx)
{
	return features_entry(ctx, SENNET_HOOK_XDP);
}
#else
#define run_features features
#endif

#include "plain.h"

/* The one path of every hook: parse, count, events, features. With no feature
 * after the counters, a plain frame takes counted_plain() instead. */
static __always_inline int handle(void *ctx, const int hook, __u8 dir)
{
	/* cfg_features read once: the verifier knows its value and keeps only
	 * the branch taken, so the short path carries no further feature test. */
	__u32 on = cfg_features;

	if (on == 0) {
		if (__builtin_expect(counted_plain(ctx, hook, dir, 0), 1))
			return pass(hook);
	} else if (!(on & SENNET_FEAT_AFTER)) {
		if (counted_plain(ctx, hook, dir, 1))
			return pass(hook);
	}

	struct sennet_event ev = {};
	struct sennet_l4 l4 = {};
	__u32 kinds;
	__u32 ifindex;

	if (hook == SENNET_HOOK_XDP)
		ifindex = ((struct xdp_md *)ctx)->ingress_ifindex;
	else
		ifindex = ((struct __sk_buff *)ctx)->ifindex;
	ev.direction = dir;
	ev.ifindex = ifindex;
	/* The parser never rejects a packet: whatever it finds, the packet is
	 * counted below. It runs first only to learn the header length that
	 * every segment of an aggregate repeats. The context's fields are read
	 * after it, so they need not survive its helper calls on the stack. */
	kinds = parse(ctx, hook, &ev, &l4);

	__u32 segs, bytes, frame;
	__u32 tci = on_wire(ctx, hook, l4.hdr_end, &segs, &bytes, &frame);

	if (tci)
		l4.vlan_id = tci & 0x0fff;
	__u32 slot = count(ifindex, dir, segs, bytes);

	ev.pkt_len = frame;
	if (frame > cfg_large_packet_bytes)
		kinds |= KIND(SENNET_EV_LARGE_PACKET);
	/* The clock only for what needs it: events, bursts, the features. */
	__u64 now = 0;

	if (kinds || feature_on(SENNET_FEAT_BURSTS | SENNET_FEAT_AFTER))
		now = bpf_ktime_get_ns();
	if (feature_on(SENNET_FEAT_BURSTS))
		burst_account(slot, dir, segs, bytes, now);
	if (kinds) {
		ev.ts_ns = now;
		emit(&ev, kinds);
	}
	/* Last: under bcc a tail call, which does not return. */
	if (feature_on(SENNET_FEAT_AFTER))
		run_features(ctx, hook, &ev, &l4, segs, bytes, now);
	return pass(hook);
}

SEC("tc")
int sennet_ingress(struct __sk_buff *skb)
{
	return handle(skb, SENNET_HOOK_TC, SENNET_DIR_RX);
}

SEC("tc")
int sennet_egress(struct __sk_buff *skb)
{
	return handle(skb, SENNET_HOOK_TC, SENNET_DIR_TX);
}

/* The receive side at XDP instead of TC ingress (the agent's `attach = xdp`):
 * the same counting, earlier. Always XDP_PASS: the program only observes. */
SEC("xdp")
int sennet_xdp(struct xdp_md *ctx)
{
	return handle(ctx, SENNET_HOOK_XDP, SENNET_DIR_RX);
}

SENNET_LICENSE;
