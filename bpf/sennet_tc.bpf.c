// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Sennet TC data plane: counts packets and bytes per interface and direction,
 * and reports large packets and malformed or hostile headers through a ring
 * buffer.
 *
 * The programs observe only. Every path returns TC_ACT_UNSPEC, so the packet
 * continues exactly as if no filter were attached (any later filter on the
 * same hook still runs). Headers are read in place from the packet's linear
 * part when they are there (the common case, no helper call); otherwise they
 * are copied with bpf_skb_load_bytes, which works on non-linear skbs without
 * pulling them (pulling would change the skb's layout). Either way "too short"
 * is one check per header.
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

/* large_packet fires for frames strictly longer than this (bytes on the wire;
 * for an aggregate, its largest segment). */
SENNET_TUNABLE(__u32, cfg_large_packet_bytes, 1514);

SENNET_PERCPU_ARRAY(COUNTERS, __u32, struct sennet_counter, SENNET_COUNTER_SLOTS);
/* ifindex -> slot (0 = not registered). An array, not a hash: the lookup is
 * inlined by the verifier, and user space reads it whole through mmap. */
SENNET_MMAP_ARRAY(IFSLOTS, __u32, __u32, SENNET_IFINDEX_LIMIT);
SENNET_PERCPU_ARRAY(EV_COUNTS, __u32, __u64, SENNET_EV_KINDS); /* detected, by kind */
SENNET_PERCPU_ARRAY(RB_DROPS, __u32, __u64, SENNET_EV_KINDS);  /* ring full, by kind */
SENNET_RINGBUF(EVENTS);

/* Map accessors, one branch per dialect (see compat.h for why). */
#ifdef SENNET_BCC
static __always_inline __u32 *ifslot_of(__u32 *ifindex) { return IFSLOTS.lookup(ifindex); }
static __always_inline struct sennet_counter *counter_at(__u32 *key) { return COUNTERS.lookup(key); }
static __always_inline __u64 *rb_drops_at(__u32 *kind) { return RB_DROPS.lookup(kind); }
static __always_inline __u64 *ev_count_at(__u32 *kind) { return EV_COUNTS.lookup(kind); }
static __always_inline void *event_reserve(void) { return EVENTS.ringbuf_reserve(sizeof(struct sennet_event)); }
static __always_inline void event_submit(void *e) { EVENTS.ringbuf_submit(e, 0); }
#else
static __always_inline __u32 *ifslot_of(__u32 *ifindex) { return bpf_map_lookup_elem(&IFSLOTS, ifindex); }
static __always_inline struct sennet_counter *counter_at(__u32 *key) { return bpf_map_lookup_elem(&COUNTERS, key); }
static __always_inline __u64 *rb_drops_at(__u32 *kind) { return bpf_map_lookup_elem(&RB_DROPS, kind); }
static __always_inline __u64 *ev_count_at(__u32 *kind) { return bpf_map_lookup_elem(&EV_COUNTS, kind); }
static __always_inline void *event_reserve(void) { return bpf_ringbuf_reserve(&EVENTS, sizeof(struct sennet_event), 0); }
static __always_inline void event_submit(void *e) { bpf_ringbuf_submit(e, 0); }
#endif

#define ETH_HDR_LEN 14
#define VLAN_TAG_LEN 4
#define ETHP_IPV4 0x0800
#define ETHP_IPV6 0x86DD
#define ETHP_8021Q 0x8100
#define ETHP_8021AD 0x88A8

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define V6_HOPOPTS 0
#define V6_ROUTING 43
#define V6_FRAGMENT 44
#define V6_DSTOPTS 60

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_PSH 0x08
#define TCPF_URG 0x20

#define KIND(k) (1u << (k))

/* Point at `len` bytes at `off`: straight into the packet when they lie in its
 * linear part, else copied into `buf` with bpf_skb_load_bytes (non-linear
 * skbs). NULL when the frame is too short. `off` stays small (headers only),
 * which also keeps the verifier's packet-range tracking simple. */
static __always_inline const __u8 *header(struct __sk_buff *skb, __u32 off, __u32 len, __u8 *buf)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off <= 255 && data + off + len <= end)
		return (const __u8 *)data + off;
	if (bpf_skb_load_bytes(skb, off, buf, len) < 0)
		return 0;
	return buf;
}

/* header() for a header inside an IP packet that ends at `limit` (a frame
 * offset): bytes past the IP packet (Ethernet padding, a trailer) are not it. */
static __always_inline const __u8 *inner(struct __sk_buff *skb, __u32 off, __u32 len, __u32 limit,
					 __u8 *buf)
{
	if (off + len > limit)
		return 0;
	return header(skb, off, len, buf);
}

static __always_inline __u16 be16(const __u8 *p)
{
	return ((__u16)p[0] << 8) | p[1];
}

static __always_inline int same_v6(const __u8 *a, const __u8 *b)
{
	__u32 diff = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static __always_inline void count(struct __sk_buff *skb, __u32 dir, __u32 segs, __u32 bytes)
{
	__u32 ifindex = skb->ifindex;
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
}

/* Parse the L4 header at `off` of an IP packet ending at `limit`. Sets *hdr_end
 * to the end of the TCP/UDP header: the headers every segment of an aggregate
 * repeats. */
static __always_inline __u32 parse_l4(struct __sk_buff *skb, __u32 off, __u32 limit, __u8 proto,
				      struct sennet_event *ev, __u32 *hdr_end)
{
	__u8 buf[20];
	const __u8 *h;

	if (proto == PROTO_TCP) {
		h = inner(skb, off, 20, limit, buf);
		if (!h)
			return KIND(SENNET_EV_TRUNCATED_L4);
		*hdr_end = off + ((__u32)(h[12] >> 4) << 2);
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
		h = inner(skb, off, 8, limit, buf);
		if (!h)
			return KIND(SENNET_EV_TRUNCATED_L4);
		*hdr_end = off + 8;
		ev->sport = be16(&h[0]);
		ev->dport = be16(&h[2]);
		return 0;
	}
	if (proto == PROTO_ICMP || proto == PROTO_ICMPV6) {
		/* type, code, checksum: the part every ICMP message has */
		if (!inner(skb, off, 4, limit, buf))
			return KIND(SENNET_EV_TRUNCATED_L4);
	}
	return 0;
}

static __always_inline __u32 parse_ipv4(struct __sk_buff *skb, __u32 off, struct sennet_event *ev,
				       __u32 *hdr_end)
{
	__u8 buf[20];
	const __u8 *ip = header(skb, off, 20, buf);

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
	__u32 limit = skb->len;

	/* A GSO super-packet (BIG TCP) may carry tot_len 0 by design. */
	if (tot > skb->len - off || (tot < ihl * 4 && skb->gso_segs <= 1))
		kinds |= KIND(SENNET_EV_IPV4_BAD_LEN);
	else if (tot >= ihl * 4)
		limit = off + tot; /* what follows the IP packet is padding */
	if (be16(&ip[6]) & 0x1fff)
		return kinds; /* a later fragment: no L4 header here */
	return kinds | parse_l4(skb, off + ihl * 4, limit, ip[9], ev, hdr_end);
}

static __always_inline __u32 parse_ipv6(struct __sk_buff *skb, __u32 off, struct sennet_event *ev,
				       __u32 *hdr_end)
{
	__u8 buf[40];
	const __u8 *ip = header(skb, off, 40, buf);

	if (!ip)
		return KIND(SENNET_EV_TRUNCATED_L3);

	__u32 kinds = 0;
	__u8 nh = ip[6];
	__u32 plen = be16(&ip[4]);
	/* Payload length 0 is a jumbogram or a BIG TCP aggregate: the frame bounds it. */
	__u32 limit = plen ? off + 40 + plen : skb->len;

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
			x = inner(skb, off, 2, limit, xbuf);
			if (!x)
				return kinds | KIND(SENNET_EV_TRUNCATED_L3);
			nh = x[0];
			off += ((__u32)x[1] + 1) * 8;
		} else if (nh == V6_FRAGMENT) {
			x = inner(skb, off, 4, limit, xbuf);
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
	return kinds | parse_l4(skb, off, limit, nh, ev, hdr_end);
}

static __always_inline __u32 parse(struct __sk_buff *skb, struct sennet_event *ev, __u32 *hdr_end)
{
	__u8 buf[ETH_HDR_LEN];
	const __u8 *eth = header(skb, 0, ETH_HDR_LEN, buf);

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
		tag = header(skb, off, 4, tbuf);
		if (!tag)
			return KIND(SENNET_EV_TRUNCATED_L3);
		proto = be16(&tag[2]);
		off += 4;
		ev->vlan_tags += 1;
	}
	ev->eth_proto = proto;
	if (proto == ETHP_IPV4)
		return parse_ipv4(skb, off, ev, hdr_end);
	if (proto == ETHP_IPV6)
		return parse_ipv6(skb, off, ev, hdr_end);
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

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct sennet_event ev = {};
	__u32 hdr_end = 0;
	__u32 kinds;

	ev.direction = dir;
	ev.ifindex = skb->ifindex;
	/* The parser never rejects a packet: whatever it finds, the packet is
	 * counted below. It runs first only to learn the header length that
	 * every segment of an aggregate repeats. The skb fields are read after
	 * it, so they need not survive its helper calls on the stack. */
	kinds = parse(skb, &ev, &hdr_end);

	__u32 len = skb->len;
	/* An outer tag kept in metadata: moved out of the data before TC ingress,
	 * or inserted after TC egress by the driver (or the NIC). On the wire it
	 * is in every frame. */
	__u32 tag = skb->vlan_present ? VLAN_TAG_LEN : 0;
	__u32 segs = skb->gso_segs;
	__u32 frame = len + tag;
	__u32 bytes = frame;

	if (__builtin_expect(segs > 1, 0)) {
		/* GRO/GSO aggregate: `segs` frames on the wire, each with the headers
		 * (up to the end of the TCP/UDP header) and at most gso_size bytes of
		 * payload. Headers unknown (not TCP/UDP): count the data once. */
		if (hdr_end > len)
			hdr_end = 0;
		bytes += (segs - 1) * (hdr_end + tag);
		if (hdr_end + skb->gso_size + tag < frame)
			frame = hdr_end + skb->gso_size + tag;
	} else {
		segs = 1;
	}
	count(skb, dir, segs, bytes);
	ev.pkt_len = frame;
	if (frame > cfg_large_packet_bytes)
		kinds |= KIND(SENNET_EV_LARGE_PACKET);
	if (kinds) {
		ev.ts_ns = bpf_ktime_get_ns();
		emit(&ev, kinds);
	}
	return SENNET_TC_ACT_UNSPEC;
}

SEC("tc")
int sennet_ingress(struct __sk_buff *skb)
{
	return handle(skb, SENNET_DIR_RX);
}

SEC("tc")
int sennet_egress(struct __sk_buff *skb)
{
	return handle(skb, SENNET_DIR_TX);
}

SENNET_LICENSE;
