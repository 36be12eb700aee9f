/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Layouts shared between the TC programs and user space.
 *
 * Fixed-width fields only, explicit padding, no bitfields: the Python side
 * mirrors these with struct formats (datapath/record.py), and a unit test compiles
 * a probe against this header to check that offsets and sizes agree.
 */
#ifndef SENNET_TC_H
#define SENNET_TC_H

/* Interfaces the counters can tell apart. Slot 0 collects packets seen on an
 * ifindex the agent never registered (a misattached filter): it should stay 0. */
#define SENNET_MAX_IFACES 64
#define SENNET_COUNTER_SLOTS (SENNET_MAX_IFACES * 2)
/* IFSLOTS is indexed by ifindex directly; larger ifindexes count as unregistered
 * and the agent refuses to attach to them. */
#define SENNET_IFINDEX_LIMIT 65536

/* Features after the counters and events, each on (bit set) or off: the
 * load-time tunable cfg_features. libbpf writes it into .rodata before load,
 * so the verifier drops the code of a feature that is off and its packets pay
 * nothing for it; bcc gets it as -Dcfg_features=N. The counters and events
 * are always on. */
#define SENNET_FEAT_FLOWS  0x1  /* the flow table (FLOWS, FLOW_STATS) */
#define SENNET_FEAT_BURSTS 0x2  /* microburst windows (BURSTS) */
#define SENNET_FEAT_TCP    0x4  /* TCP health (HANDSHAKES, TCP_COUNTERS, two histograms) */
#define SENNET_FEAT_DNS    0x8  /* DNS (its maps, one histogram) */
#define SENNET_FEAT_ALL    0xf

#define SENNET_DIR_RX 0 /* TC ingress */
#define SENNET_DIR_TX 1 /* TC egress */

/* Event kinds. Keep in sync with sennet/agent/datapath/layout.py (tested). */
#define SENNET_EV_LARGE_PACKET   1  /* a frame (an aggregate's largest segment) above the load-time threshold */
#define SENNET_EV_TCP_NULL       2  /* TCP with no flags at all */
#define SENNET_EV_TCP_SYN_FIN    3
#define SENNET_EV_TCP_SYN_RST    4
#define SENNET_EV_TCP_XMAS       5  /* FIN+PSH+URG */
#define SENNET_EV_LAND           6  /* source address == destination address */
#define SENNET_EV_IPV4_BAD_IHL   7  /* IHL < 5 */
#define SENNET_EV_IPV4_BAD_LEN   8  /* total length beyond the frame, or below the header */
#define SENNET_EV_TRUNCATED_L3   9  /* EtherType says IP, the frame is too short for it */
#define SENNET_EV_TRUNCATED_L4  10  /* IP says TCP/UDP/ICMP, the IP packet is too short for it */
#define SENNET_EV_KINDS         11  /* one past the last kind: size of the drop counters */

/* What crossed the wire: an aggregate counts as its segments, an outer VLAN
 * tag kept in skb metadata counts 4 bytes in every frame. */
struct sennet_counter {
	__u64 packets;
	__u64 bytes;
};

union sennet_addr {
	__u32 v4;       /* network byte order, as on the wire */
	__u8 v6[16];
};

struct sennet_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;
	__u32 pkt_len;      /* bytes on the wire: the frame from the Ethernet header on, an
	                     * outer VLAN tag kept in metadata included, no FCS; for a
	                     * GRO/GSO aggregate, its largest segment */
	__u8 direction;     /* SENNET_DIR_* */
	__u8 kind;          /* SENNET_EV_* */
	__u8 ip_version;    /* 0 (not IP), 4 or 6 */
	__u8 l4_proto;      /* IPPROTO_* or 0 */
	__u16 sport;        /* host byte order; 0 where not parsed */
	__u16 dport;
	__u16 eth_proto;    /* host byte order, innermost EtherType after VLAN tags */
	__u8 tcp_flags;
	__u8 vlan_tags;     /* 802.1Q/802.1ad tags found in the frame data */
	__u32 _pad;
	union sennet_addr saddr;
	union sennet_addr daddr;
};

/* Flows: one entry per direction of a conversation, seen on one interface and
 * hook. A -> B and B -> A are two flows (on a mirror port both arrive on
 * ingress; on a host, one leaves on egress and the other arrives on ingress).
 * Every byte of the key is set, padding included: the kernel hashes all of it. */
struct sennet_flow_key {
	union sennet_addr saddr;  /* IPv4 in the first 4 bytes, the rest zero */
	union sennet_addr daddr;
	__u32 ifindex;
	__u16 sport;              /* host byte order; 0 for protocols without ports */
	__u16 dport;
	__u16 vlan_id;            /* outer VLAN id, 0 = untagged */
	__u8 ip_version;          /* 4 or 6 */
	__u8 l4_proto;            /* IPPROTO_* */
	__u8 direction;           /* SENNET_DIR_* */
	__u8 _pad[3];
};

#define SENNET_FLOW_ENDED     0x01  /* FIN or RST seen: the agent removes it after reading */
#define SENNET_FLOW_SEQ_VALID 0x02  /* next_seq holds a TCP sequence number */

struct sennet_flow {
	__u64 packets;       /* on the wire, as the interface counters (aggregates as segments) */
	__u64 bytes;
	__u64 first_ns;      /* bpf_ktime_get_ns() of the first and the latest packet */
	__u64 last_ns;
	__u32 next_seq;      /* TCP: one past the highest sequence number sent */
	__u32 retrans;       /* TCP: segments whose sequence did not advance (retransmitted or out of order) */
	__u32 zero_windows;  /* TCP: segments advertising a zero receive window */
	__u8 tcp_flags;      /* OR of the flags of every segment */
	__u8 state;          /* SENNET_FLOW_* */
	__u16 _pad;
};

/* TCP health. TCP_COUNTERS (per CPU, pinned) slots: */
#define SENNET_TCP_RST_RX       0  /* RST segments on the ingress hook (SENNET_TCP_RST_RX + direction) */
#define SENNET_TCP_RST_TX       1  /* ... on the egress hook */
#define SENNET_TCP_RETRANS      2  /* segments whose sequence did not advance */
#define SENNET_TCP_ZERO_WINDOW  3  /* segments advertising a zero window (not RST) */
#define SENNET_TCP_UNANSWERED   4  /* written by the agent: handshakes expired with no SYN/ACK */
#define SENNET_TCP_MALFORMED    5  /* data offset below 5 words or past the IP packet */
#define SENNET_TCP_SYN_RETRIED  6  /* a pending handshake's SYN seen again (same ISN) */
#define SENNET_TCP_SLOTS        8

/* HANDSHAKES (LRU hash, pinned): one pending handshake, keyed by the
 * connection as the client sees it, on one interface and VLAN (either hook: a
 * SYN and its SYN/ACK meet whichever hooks they cross). */
#ifndef SENNET_TCP_HANDSHAKES
#define SENNET_TCP_HANDSHAKES 65536  /* default size; the loaders set tcp_handshakes_max */
#endif
struct sennet_hs_key {
	union sennet_addr client;  /* the SYN's source; IPv4 in the first 4 bytes, the rest zero */
	union sennet_addr server;
	__u32 ifindex;
	__u16 cport;               /* host byte order */
	__u16 sport;
	__u16 vlan_id;             /* outer VLAN id, 0 = untagged (mirror ports carry many) */
	__u8 ip_version;
	__u8 _pad;
};

#define SENNET_HS_SYN_RETRIED    0x01  /* Karn: the SYN/ACK may answer any copy, no SYN sample */
#define SENNET_HS_SYNACK_RETRIED 0x02  /* the ACK may answer any copy, no SYN/ACK sample */

struct sennet_hs {
	__u64 syn_ns;        /* first SYN (bpf_ktime_get_ns) */
	__u64 synack_ns;     /* first SYN/ACK, 0 = none yet */
	__u32 client_isn;
	__u32 server_isn;
	__u8 flags;          /* SENNET_HS_* */
	__u8 _pad[7];
};

/* Flow bookkeeping and microbursts (bpf/flows.h). FLOW_STATS is indexed by these. */
#define SENNET_FLOW_STAT_CREATED   0  /* entries inserted by the data plane */
#define SENNET_FLOW_STAT_UNTRACKED 1  /* packets that found no entry and could not insert one */
/* Written by the agent (never by the programs), so its totals survive its restarts: */
#define SENNET_FLOW_STAT_ENDED     2  /* flows it removed after FIN/RST or the idle timeout */
#define SENNET_FLOW_STAT_LOST      3  /* flows created and evicted before any read saw them */
#define SENNET_FLOW_STAT_EVICTED   4  /* flows it had read that the LRU took before they ended */
#define SENNET_FLOW_STATS          5

#define SENNET_BURST_WINDOW_1MS  1000000ULL
#define SENNET_BURST_WINDOW_10MS 10000000ULL

/* Latency histograms: fixed log2 buckets in the data plane. Bucket i counts
 * durations below 2^i microseconds (bucket 0: below 1 us); the last bucket
 * counts everything from 2^(BUCKETS-2) us on. After the buckets, one slot
 * holds the sum in nanoseconds. HISTOGRAMS is indexed hist * SLOTS + bucket. */
#define SENNET_HIST_BUCKETS 28               /* up to 2^26 us = 67 s, then +Inf */
#define SENNET_HIST_SLOTS (SENNET_HIST_BUCKETS + 1)
#define SENNET_HIST_DNS_LATENCY   0          /* query -> response, matched by client, port, id */
#define SENNET_HIST_TCP_SYN       1          /* SYN -> SYN/ACK: the server side of the tap */
#define SENNET_HIST_TCP_SYNACK    2          /* SYN/ACK -> ACK: the client side of the tap */
#define SENNET_HISTS              3

#endif /* SENNET_TC_H */
