/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * What the parser learns about one packet, and the small helpers every
 * feature (counters, flows, TCP health, DNS) reads headers with.
 *
 * Included by sennet_tc.bpf.c before the feature headers. The bcc loader
 * inlines every local #include into one text, because bcc rewrites map method
 * calls only in the text it is given, never in an included file.
 */
#ifndef SENNET_PACKET_H
#define SENNET_PACKET_H

/* Where the transport header lies, and the TCP fields the features need. All
 * offsets are frame offsets; 0 means "not found". Filled by parse(). */
struct sennet_l4 {
	__u32 l4_off;   /* start of the TCP/UDP header */
	__u32 hdr_end;  /* end of the TCP/UDP header: where the payload starts */
	__u32 limit;    /* end of the IP packet (padding or a trailer lies beyond) */
	__u32 seq;      /* TCP sequence number, host order */
	__u32 ack;      /* TCP acknowledgement number, host order */
	__u16 window;   /* TCP window field as sent (unscaled) */
	__u16 vlan_id;  /* outer VLAN id: skb metadata, else the first tag in the data; 0 = none */
};

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
#define TCPF_ACK 0x10
#define TCPF_URG 0x20

#define KIND(k) (1u << (k))

/* The hook a program runs at. Every reader below takes the program's context
 * as `void *ctx` plus this constant: the functions are inlined, so the compiler
 * keeps only the branch of the hook at hand and the verifier never sees the
 * other one. One parser then serves TC (struct __sk_buff) and XDP (struct
 * xdp_md) without a copy. */
#define SENNET_HOOK_TC 0
#define SENNET_HOOK_XDP 1

static __always_inline void *pkt_data(void *ctx, const int hook)
{
	if (hook == SENNET_HOOK_XDP)
		return (void *)(long)((struct xdp_md *)ctx)->data;
	return (void *)(long)((struct __sk_buff *)ctx)->data;
}

static __always_inline void *pkt_data_end(void *ctx, const int hook)
{
	if (hook == SENNET_HOOK_XDP)
		return (void *)(long)((struct xdp_md *)ctx)->data_end;
	return (void *)(long)((struct __sk_buff *)ctx)->data_end;
}

/* Bytes of the packet the program sees. At XDP the frame is one linear buffer
 * (the program is not loaded for multi-buffer frames), so it is all there. */
static __always_inline __u32 pkt_len(void *ctx, const int hook)
{
	if (hook == SENNET_HOOK_XDP)
		return (__u32)(pkt_data_end(ctx, hook) - pkt_data(ctx, hook));
	return ((struct __sk_buff *)ctx)->len;
}

/* Frames on the wire this packet stands for: a GRO/GSO aggregate at TC, always
 * one at XDP (before GRO). May be 0 at TC for a plain packet. */
static __always_inline __u32 pkt_gso_segs(void *ctx, const int hook)
{
	if (hook == SENNET_HOOK_XDP)
		return 1;
	return ((struct __sk_buff *)ctx)->gso_segs;
}

static __always_inline long pkt_load(void *ctx, const int hook, __u32 off, void *buf, __u32 len)
{
	if (hook == SENNET_HOOK_XDP)
		return bpf_xdp_load_bytes((struct xdp_md *)ctx, off, buf, len);
	return bpf_skb_load_bytes((struct __sk_buff *)ctx, off, buf, len);
}

/* Point at `len` bytes at `off`: straight into the packet when they lie in its
 * linear part, else copied into `buf` (non-linear skbs at TC). NULL when the
 * frame is too short. `off` stays small (headers only), which also keeps the
 * verifier's packet-range tracking simple. */
static __always_inline const __u8 *header(void *ctx, const int hook, __u32 off, __u32 len, __u8 *buf)
{
	void *data = pkt_data(ctx, hook);
	void *end = pkt_data_end(ctx, hook);

	if (off <= 255 && data + off + len <= end)
		return (const __u8 *)data + off;
	if (pkt_load(ctx, hook, off, buf, len) < 0)
		return 0;
	return buf;
}

/* header() for a header inside an IP packet that ends at `limit` (a frame
 * offset): bytes past the IP packet (Ethernet padding, a trailer) are not it. */
static __always_inline const __u8 *inner(void *ctx, const int hook, __u32 off, __u32 len,
					 __u32 limit, __u8 *buf)
{
	if (off + len > limit)
		return 0;
	return header(ctx, hook, off, len, buf);
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

static __always_inline __u32 be32(const __u8 *p)
{
	return ((__u32)p[0] << 24) | ((__u32)p[1] << 16) | ((__u32)p[2] << 8) | p[3];
}

/* Histogram bucket of a duration: bucket i holds values below 2^i microseconds,
 * the last one everything longer (see SENNET_HIST_BUCKETS). A branch-free
 * binary search: the BPF target has no count-leading-zeros instruction. */
static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u64 v = ns / 1000;
	__u32 r = 0, s;

	s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	/* r = floor(log2(v)) for v >= 1; v < 2^(r+1) */
	if (ns < 1000)
		return 0;
	r += 1;
	return r < SENNET_HIST_BUCKETS - 1 ? r : SENNET_HIST_BUCKETS - 1;
}

#endif /* SENNET_PACKET_H */
