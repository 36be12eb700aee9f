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

/* The EtherType IPv4 and the byte after it, version 4 and IHL 5, as one
 * 4-byte load at the EtherType sees them (the fourth byte, TOS, masked out). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ETH_IPV4_IHL5_MASK 0x00ffffffu
#define ETH_IPV4_IHL5 0x00450008u
#else
#define ETH_IPV4_IHL5_MASK 0xffffff00u
#define ETH_IPV4_IHL5 0x08004500u
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

/* Whether the TCP or UDP header at `l4` raises no event in parse_l4(): whole
 * within the IP packet (`room` bytes after the IP header) and, for TCP, none of
 * the hostile flag combinations; and the IP packet within the frame (`room` at
 * most `most`, the bytes the frame has after the IP header; ~0 where the IP
 * header's length field needs no such check). `most` >= 20 here, so
 * "m <= room <= most" is one unsigned compare of room - m with most - m (a
 * room below m wraps to a large number). */
static __always_inline int plain_l4(__u8 proto, const __u8 *l4, __u32 room, __u32 most)
{
	if (__builtin_expect(proto == PROTO_UDP, 1))
		return room - 8 <= most - 8;
	if (proto != PROTO_TCP || room - 20 > most - 20)
		return 0;

	__u8 f = l4[13];

	return !(f == 0 || (f & (TCPF_SYN | TCPF_FIN)) == (TCPF_SYN | TCPF_FIN) ||
		 (f & (TCPF_SYN | TCPF_RST)) == (TCPF_SYN | TCPF_RST) ||
		 (f & (TCPF_FIN | TCPF_PSH | TCPF_URG)) == (TCPF_FIN | TCPF_PSH | TCPF_URG));
}

/* `n` bytes after the Ethernet header: in place when the linear part holds
 * them, else one copy into `buf` (a frame whose linear part ends after the
 * Ethernet header, as a PACKET_MMAP sender's does); 0 when the frame is
 * shorter (the full parser then decides what it is). */
static __always_inline const __u8 *plain_l3(void *ctx, const int hook, const __u8 *eth, void *end,
					    __u32 len, __u8 *buf, const __u32 n)
{
	if ((void *)(eth + ETH_HDR_LEN + n) <= end)
		return eth + ETH_HDR_LEN;
	if (len >= ETH_HDR_LEN + n && pkt_load(ctx, hook, ETH_HDR_LEN, buf, n) == 0)
		return buf;
	return 0;
}

/* Bytes the IPv6 short path reads: the header and a TCP header without options.
 * A shorter frame (UDP in less than 74 bytes) takes the full parser. */
#define IPV6_PRELOAD 60

/* The IPv4 checks of plain_frame() on a header in hand: IHL 5 (the version
 * nibble 4 too: anything else goes to the full parser), not LAND, and a plain
 * TCP/UDP header after it within a total length that is within the frame
 * (plain_l4(); a total length below 20 wraps `room` to a large number). A
 * later fragment needs no check of its own: the full parser reads no L4 header
 * there and raises nothing the checks here would not. `len` >= 54 here. */
static __always_inline int plain_ipv4(const __u8 *ip, __u32 len)
{
	if (ip[0] != 0x45 || *(const __u32 *)&ip[12] == *(const __u32 *)&ip[16])
		return 0;
	return plain_l4(ip[9], &ip[20], load_be16(&ip[2]) - 20, len - ETH_HDR_LEN - 20);
}

/* The same for IPv6 without extension headers (`len` >= 74 here). */
static __always_inline int plain_ipv6(const __u8 *ip, __u32 len)
{
	__u32 plen = load_be16(&ip[4]);
	const __u64 *a = (const __u64 *)&ip[8];

	/* Payload length 0 (a jumbogram, BIG TCP): the frame bounds it, as in parse_ipv6(). */
	if (!plen)
		plen = len - ETH_HDR_LEN - 40;
	if (((a[0] ^ a[2]) | (a[1] ^ a[3])) == 0)
		return 0; /* LAND */
	return plain_l4(ip[6], &ip[40], plen, ~0u);
}

/* The frame nearly every packet is: untagged IPv4 without options (a
 * fragment too: see plain_ipv4()), or IPv6 without extension headers; TCP or UDP, its header whole
 * within the IP packet; and nothing in it that raises an event. Returns
 * nonzero for such a frame, 0 for anything else (then the full parser
 * classifies it). The checks are the full parser's own (parse_ipv4(),
 * parse_ipv6(), parse_l4()), so every frame this accepts would have raised no
 * event there. Each field is read in one load as it lies in the frame and
 * compared with a constant in network order: the fewest instructions per
 * check, which is what this path costs when the frame is in the cache
 * (BPF_PROG_TEST_RUN). The first bounds check is for the longest IPv4 read
 * (54 bytes), so a linear IPv4 frame, the common case, pays one. */
static __always_inline int plain_frame(void *ctx, const int hook, __u32 len)
{
	/* 8-aligned: the addresses are compared as 4- and 8-byte words */
	__u8 buf[IPV6_PRELOAD] __attribute__((aligned(8)));
	const __u8 *eth = pkt_data(ctx, hook);
	void *end = pkt_data_end(ctx, hook);
	const __u8 *ip;

	if (__builtin_expect((void *)(eth + ETH_HDR_LEN + IPV4_PRELOAD) <= end, 1)) {
		if (__builtin_expect(*(const __u16 *)&eth[12] == NET16(ETHP_IPV4), 1))
			return plain_ipv4(eth + ETH_HDR_LEN, len);
	} else {
		/* Keeps eth + 14 for this branch, off the linear IPv4 frame's path. */
		asm volatile("" : "+r"(eth));
		if ((void *)(eth + ETH_HDR_LEN) > end)
			return 0;
	}
	if (*(const __u16 *)&eth[12] == NET16(ETHP_IPV4)) {
		ip = plain_l3(ctx, hook, eth, end, len, buf, IPV4_PRELOAD);
		return ip ? plain_ipv4(ip, len) : 0;
	}
	if (*(const __u16 *)&eth[12] != NET16(ETHP_IPV6))
		return 0;
	ip = plain_l3(ctx, hook, eth, end, len, buf, IPV6_PRELOAD);
	return ip ? plain_ipv6(ip, len) : 0;
}

/* The commonest plain frame, checked first and on its own: IPv4 UDP whose IP
 * header and the 8 bytes after it lie in the linear part (the UDP header is
 * not read: only its length within the IP packet matters; the bounds check
 * also makes `len` >= 42 for the compare below). The checks are
 * plain_ipv4()'s for UDP, so a frame accepted here is one plain_frame()
 * accepts. */
static __always_inline int plain_udp4(void *ctx, const int hook, __u32 len)
{
	const __u8 *eth = pkt_data(ctx, hook);
	const __u8 *ip = eth + ETH_HDR_LEN;

	if ((void *)(ip + 28) > pkt_data_end(ctx, hook) ||
	    (*(const __u32 *)&eth[12] & ETH_IPV4_IHL5_MASK) != ETH_IPV4_IHL5 || ip[9] != PROTO_UDP ||
	    *(const __u32 *)&ip[12] == *(const __u32 *)&ip[16])
		return 0;
	/* 8 <= tot - 20 <= the frame's bytes after the IP header */
	return load_be16(&ip[2]) - 28 <= len - ETH_HDR_LEN - 28;
}

/* Count a plain frame of `bytes` on the wire (and, with `bursts`, put it in
 * the burst windows). */
static __always_inline void count_plain(void *ctx, const int hook, __u8 dir, const int bursts,
					__u32 bytes)
{
	__u32 ifindex;

	if (hook == SENNET_HOOK_XDP)
		ifindex = ((struct xdp_md *)ctx)->ingress_ifindex;
	else
		ifindex = ((struct __sk_buff *)ctx)->ifindex;

	__u32 slot = count(ifindex, dir, 1, bytes);

	if (bursts)
		burst_account(slot, dir, 1, bytes, bpf_ktime_get_ns());
}

/* Counters (and, with `bursts`, the burst windows) only, for a plain frame
 * with every feature after the counters off: no event record on the stack, no
 * full parse. Returns 0 when the packet needs the full path: not a plain
 * frame, a large one (an event), or a GRO/GSO aggregate (its segments' headers
 * are counted by on_wire() on the full path; an aggregate stands for many
 * frames, so its share of the parse per frame is small). What the frame is on
 * the wire is then its length and a VLAN tag kept in metadata, without
 * on_wire()'s aggregate arithmetic. The commonest frame (plain_udp4()) is
 * counted in a straight line with no taken branch before the count; every
 * other plain frame goes through plain_frame() to a second copy of the count. */
static __always_inline int counted_plain(void *ctx, const int hook, __u8 dir, const int bursts)
{
	__u32 len = pkt_len(ctx, hook);
	__u32 bytes = len;

	if (hook == SENNET_HOOK_TC) {
		struct __sk_buff *skb = ctx;

		if (__builtin_expect(skb->gso_segs > 1, 0))
			return 0;
		/* The kernel rewrites vlan_present into a 0 or 1 (a bit test on
		 * 6.1, vlan_all != 0 since): 4 bytes per tag, no branch. */
		bytes += skb->vlan_present << 2;
	}
	if (__builtin_expect(bytes > cfg_large_packet_bytes, 0))
		return 0;
	if (__builtin_expect(plain_udp4(ctx, hook, len), 1)) {
		count_plain(ctx, hook, dir, bursts, bytes);
		return 1;
	}
	if (!plain_frame(ctx, hook, len))
		return 0;
	count_plain(ctx, hook, dir, bursts, bytes);
	return 1;
}

#endif /* SENNET_PLAIN_H */
