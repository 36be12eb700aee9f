/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * What a frame is on the wire (on_wire(), for every path), and the short path
 * a plain frame takes when no feature after the counters is on
 * (counted_plain()). Included by sennet_tc.bpf.c after the counters, the
 * parser's constants and the features' headers, whose functions it uses.
 */
#ifndef SENNET_PLAIN_H
#define SENNET_PLAIN_H

/* What the frame is on the wire, from its length and the headers every segment
 * repeats (`hdr_end`, 0 = unknown): frames (`segs`), bytes, and its largest
 * frame. What only the skb knows (a VLAN tag kept in metadata, a GRO/GSO
 * aggregate) is read at TC; at XDP the frame is as it arrived: any tag is still
 * in the data, and GRO has not run, so every frame is one segment. Returns the
 * metadata tag's TCI with bit 16 set, or 0 when there is none. */
static __always_inline __u32 on_wire(void *ctx, const int hook, __u32 hdr_end, __u32 *segs_out,
				     __u32 *bytes_out, __u32 *frame_out)
{
	__u32 len = pkt_len(ctx, hook);
	/* An outer tag kept in metadata: moved out of the data before TC ingress,
	 * or inserted after TC egress by the driver (or the NIC). On the wire it
	 * is in every frame. */
	__u32 tag = 0;
	__u32 tci = 0;
	__u32 segs = 1;
	__u32 gso_size = 0;

	if (hook == SENNET_HOOK_TC) {
		struct __sk_buff *skb = ctx;

		if (skb->vlan_present) {
			tag = VLAN_TAG_LEN;
			tci = 0x10000 | skb->vlan_tci;
		}
		segs = skb->gso_segs;
	}
	__u32 frame = len + tag;
	__u32 bytes = frame;

	if (__builtin_expect(segs > 1, 0)) {
		/* GRO/GSO aggregate: `segs` frames on the wire, each with the headers
		 * (up to the end of the TCP/UDP header) and at most gso_size bytes of
		 * payload. Headers unknown (not TCP/UDP): count the data once. */
		if (hook == SENNET_HOOK_TC)
			gso_size = ((struct __sk_buff *)ctx)->gso_size;
		if (hdr_end > len)
			hdr_end = 0;
		bytes += (segs - 1) * (hdr_end + tag);
		if (hdr_end + gso_size + tag < frame)
			frame = hdr_end + gso_size + tag;
	} else {
		segs = 1;
	}
	*segs_out = segs;
	*bytes_out = bytes;
	*frame_out = frame;
	return tci;
}

/* A 16-bit field compared as it lies in the frame (network order): one load and
 * one compare, no byte swap. `x` is a constant in host order. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NET16(x) ((__u16)((((x) & 0xff) << 8) | (((x) >> 8) & 0xff)))
#else
#define NET16(x) ((__u16)(x))
#endif

/* A 16-bit field in network order, read in one load (be16() takes two). */
static __always_inline __u32 load_be16(const __u8 *p)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return __builtin_bswap16(*(const __u16 *)p);
#else
	return *(const __u16 *)p;
#endif
}

/* The frame nearly every packet is: untagged IPv4 without options, not a
 * fragment, TCP or UDP, its headers whole within the IP packet, and nothing in
 * it that raises an event. Returns the end of its TCP/UDP header, or 0 when the
 * frame is anything else (then the full parser classifies it). The checks are
 * the full parser's own (parse_ipv4(), parse_l4()), so every frame this accepts
 * would have raised no event there and ends its headers at the same offset.
 * Each field is read in one load as it lies in the frame and compared with a
 * constant in network order: the fewest instructions per check, which is what
 * this path costs when the frame is in the cache (BPF_PROG_TEST_RUN). */
static __always_inline __u32 plain_frame(void *ctx, const int hook, __u32 len)
{
	/* 8-aligned: the addresses are compared as 4-byte words */
	__u8 buf[IPV4_PRELOAD] __attribute__((aligned(8)));
	const __u8 *eth = pkt_data(ctx, hook);
	void *end = pkt_data_end(ctx, hook);
	const __u8 *ip;

	if ((void *)(eth + ETH_HDR_LEN) > end || *(const __u16 *)&eth[12] != NET16(ETHP_IPV4))
		return 0;
	/* The IP header and the 20 bytes after it: in place when the linear part
	 * holds them, else one copy (a frame whose linear part ends after the
	 * Ethernet header, as a PACKET_MMAP sender's does). */
	if ((void *)(eth + ETH_HDR_LEN + IPV4_PRELOAD) <= end)
		ip = eth + ETH_HDR_LEN;
	else if (len >= ETH_HDR_LEN + IPV4_PRELOAD &&
		 pkt_load(ctx, hook, ETH_HDR_LEN, buf, IPV4_PRELOAD) == 0)
		ip = buf;
	else
		return 0;

	__u32 tot = load_be16(&ip[2]);

	if ((ip[0] & 0x0f) != 5 || tot > len - ETH_HDR_LEN ||
	    (*(const __u16 *)&ip[6] & NET16(0x1fff)) ||
	    *(const __u32 *)&ip[12] == *(const __u32 *)&ip[16])
		return 0;
	if (ip[9] == PROTO_UDP)
		return tot >= 20 + 8 ? ETH_HDR_LEN + 20 + 8 : 0;
	if (ip[9] != PROTO_TCP || tot < 20 + 20)
		return 0;

	__u8 f = ip[20 + 13];

	if (f == 0 || (f & (TCPF_SYN | TCPF_FIN)) == (TCPF_SYN | TCPF_FIN) ||
	    (f & (TCPF_SYN | TCPF_RST)) == (TCPF_SYN | TCPF_RST) ||
	    (f & (TCPF_FIN | TCPF_PSH | TCPF_URG)) == (TCPF_FIN | TCPF_PSH | TCPF_URG))
		return 0;
	return ETH_HDR_LEN + 20 + ((__u32)(ip[20 + 12] >> 4) << 2);
}

/* Counters (and bursts) only, for a plain frame with every feature after the
 * counters off: no event record on the stack, no full parse. Returns 0 when
 * the packet needs the full path: not a plain frame, a large one (an event),
 * or a GRO/GSO aggregate (its segments' headers are counted by on_wire() on
 * the full path; an aggregate stands for many frames, so its share of the
 * parse per frame is small). What the frame is on the wire is then its length
 * and a VLAN tag kept in metadata, without on_wire()'s aggregate arithmetic. */
static __always_inline int counted_plain(void *ctx, const int hook, __u8 dir)
{
	__u32 len = pkt_len(ctx, hook);
	__u32 bytes = len;

	if (hook == SENNET_HOOK_TC) {
		struct __sk_buff *skb = ctx;

		if (skb->gso_segs > 1)
			return 0;
		if (skb->vlan_present)
			bytes += VLAN_TAG_LEN;
	}
	if (bytes > cfg_large_packet_bytes || !plain_frame(ctx, hook, len))
		return 0;

	__u32 ifindex;

	if (hook == SENNET_HOOK_XDP)
		ifindex = ((struct xdp_md *)ctx)->ingress_ifindex;
	else
		ifindex = ((struct __sk_buff *)ctx)->ifindex;

	__u32 slot = count(ifindex, dir, 1, bytes);

	if (feature_on(SENNET_FEAT_BURSTS))
		burst_account(slot, dir, 1, bytes, bpf_ktime_get_ns());
	return 1;
}

#endif /* SENNET_PLAIN_H */
