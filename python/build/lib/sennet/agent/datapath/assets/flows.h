/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Flows and microbursts.
 *
 * FLOWS is an LRU hash keyed by struct sennet_flow_key (sennet_tc.h): one
 * direction of a conversation on one interface and hook. The kernel only
 * creates entries and counts into them; the agent reads the table every
 * interval and deletes what has ended (FIN, RST) or gone idle. When the table
 * is full the LRU evicts the least recently used entry on insert; the agent
 * learns how many flows it never saw from FLOW_STATS[CREATED] (per CPU,
 * pinned, cumulative) minus the flows it saw appear.
 *
 * Packets without ports still get a flow: ICMP and other protocols are keyed
 * with ports 0, and so are the later fragments of a fragmented datagram (only
 * the first fragment carries the ports), so a fragmented datagram counts in
 * two flows: its 5-tuple (the first fragment) and its ports-0 twin (the rest).
 * Non-IP frames have no flow.
 *
 * Microbursts: for each interface slot and direction, the most packets and
 * the most bytes in any aligned 1 ms and 10 ms window (windows start at
 * multiples of their length on the monotonic clock). The windows are shared
 * by every CPU that sees the interface, so the update holds the entry's
 * bpf_spin_lock: a window's count must add up packets from all CPUs, and
 * "start a new window, else add, then raise the maximum" is several fields that
 * must change together. The agent reads and restarts the maxima once per
 * interval through BURST_EPOCH (see burst_account()).
 */
#ifndef SENNET_FLOWS_H
#define SENNET_FLOWS_H

/* Load-time capacity: libbpf sets max_entries before load, bcc gets -D. */
#ifndef SENNET_FLOW_CAPACITY
#define SENNET_FLOW_CAPACITY 262144
#endif

/* Microburst state per counter slot (user space: layout.BURST_DTYPE). One
 * window length: the window being filled and the interval's maxima, kept per
 * epoch parity (the agent reads one parity while the kernel fills the other). */
struct sennet_burst_win {
	__u64 end;          /* where the window being filled ends (ns, a multiple of its length) */
	__u64 packets;      /* in window `id` so far */
	__u64 bytes;
	__u64 max_packets[2];
	__u64 max_bytes[2];
};

struct sennet_burst {
	struct bpf_spin_lock lock;
	__u32 epoch;        /* the agent's interval number this entry last saw */
	struct sennet_burst_win w1;   /* 1 ms */
	struct sennet_burst_win w10;  /* 10 ms */
};

#ifdef SENNET_BCC
BPF_TABLE("lru_hash", struct sennet_flow_key, struct sennet_flow, FLOWS, SENNET_FLOW_CAPACITY);
BPF_TABLE("array", __u32, struct sennet_burst, BURSTS, SENNET_COUNTER_SLOTS);
BPF_TABLE("array", __u32, __u32, BURST_EPOCH, 1);
#else
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SENNET_FLOW_CAPACITY); /* the loader sets the configured size */
	__type(key, struct sennet_flow_key);
	__type(value, struct sennet_flow);
} FLOWS SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SENNET_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, struct sennet_burst);
} BURSTS SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} BURST_EPOCH SEC(".maps");
#endif
SENNET_PERCPU_ARRAY(FLOW_STATS, __u32, __u64, SENNET_FLOW_STATS);

#ifdef SENNET_BCC
static __always_inline struct sennet_flow *flow_at(struct sennet_flow_key *k) { return FLOWS.lookup(k); }
static __always_inline int flow_insert(struct sennet_flow_key *k, struct sennet_flow *v) { return FLOWS.insert(k, v); }
static __always_inline __u64 *flow_stat_at(__u32 *k) { return FLOW_STATS.lookup(k); }
static __always_inline struct sennet_burst *burst_at(__u32 *k) { return BURSTS.lookup(k); }
static __always_inline __u32 *burst_epoch_at(__u32 *k) { return BURST_EPOCH.lookup(k); }
#else
static __always_inline struct sennet_flow *flow_at(struct sennet_flow_key *k) { return bpf_map_lookup_elem(&FLOWS, k); }
static __always_inline int flow_insert(struct sennet_flow_key *k, struct sennet_flow *v) { return bpf_map_update_elem(&FLOWS, k, v, BPF_NOEXIST); }
static __always_inline __u64 *flow_stat_at(__u32 *k) { return bpf_map_lookup_elem(&FLOW_STATS, k); }
static __always_inline struct sennet_burst *burst_at(__u32 *k) { return bpf_map_lookup_elem(&BURSTS, k); }
static __always_inline __u32 *burst_epoch_at(__u32 *k) { return bpf_map_lookup_elem(&BURST_EPOCH, k); }
#endif

static __always_inline void flow_stat_add(__u32 which)
{
	__u64 *n = flow_stat_at(&which);

	if (n)
		*n += 1;
}

/* Add one packet (or aggregate) to a window; the caller holds the lock. The
 * window's end is kept rather than its number, so the division happens once per
 * window, not once per packet. */
static __always_inline void burst_window(struct sennet_burst_win *w, __u64 now, __u64 len,
					 __u32 parity, __u32 segs, __u32 bytes)
{
	if (now >= w->end) {
		w->end = (now / len + 1) * len;
		w->packets = 0;
		w->bytes = 0;
	}
	w->packets += segs;
	w->bytes += bytes;
	if (parity) {
		if (w->packets > w->max_packets[1])
			w->max_packets[1] = w->packets;
		if (w->bytes > w->max_bytes[1])
			w->max_bytes[1] = w->bytes;
	} else {
		if (w->packets > w->max_packets[0])
			w->max_packets[0] = w->packets;
		if (w->bytes > w->max_bytes[0])
			w->max_bytes[0] = w->bytes;
	}
}

/* Per interface slot and direction: the busiest 1 ms and 10 ms windows.
 *
 * The agent ends an interval by writing epoch e+1 into BURST_EPOCH, then reads
 * the maxima of parity e (an entry that saw no packet since keeps epoch e, an
 * entry that did has moved to e+1 and left parity e alone). The first packet
 * of a new epoch zeroes that parity's maxima, so the next interval starts
 * from the window being filled: a window that straddles the boundary counts
 * in both intervals. */
static __always_inline void burst_account(__u32 slot, __u32 dir, __u32 segs, __u32 bytes, __u64 now)
{
	__u32 zero = 0;
	__u32 *epoch_p = burst_epoch_at(&zero);
	__u32 key = slot * 2 + dir;
	struct sennet_burst *b = burst_at(&key);

	if (!b || !epoch_p)
		return;

	__u32 epoch = *epoch_p;
	__u32 parity = epoch & 1;

	bpf_spin_lock(&b->lock);
	if (b->epoch != epoch) {
		b->epoch = epoch;
		if (parity) {
			b->w1.max_packets[1] = 0;
			b->w1.max_bytes[1] = 0;
			b->w10.max_packets[1] = 0;
			b->w10.max_bytes[1] = 0;
		} else {
			b->w1.max_packets[0] = 0;
			b->w1.max_bytes[0] = 0;
			b->w10.max_packets[0] = 0;
			b->w10.max_bytes[0] = 0;
		}
	}
	burst_window(&b->w1, now, SENNET_BURST_WINDOW_1MS, parity, segs, bytes);
	burst_window(&b->w10, now, SENNET_BURST_WINDOW_10MS, parity, segs, bytes);
	bpf_spin_unlock(&b->lock);
}

/* Count the packet in its flow (created on first sight); returns the flow for
 * the TCP health checks, or NULL when the table had no room for it.
 *
 * Counters are added atomically: several CPUs may carry the same flow (RSS on
 * a mirror port spreads by hash, not by direction, and a GRO flush may run on
 * another CPU). A racing create loses BPF_NOEXIST and counts into the winner's
 * entry instead. */
static __always_inline struct sennet_flow *flow_account(const struct sennet_event *ev,
							const struct sennet_l4 *l4, __u32 segs,
							__u32 bytes, __u64 now)
{
	struct sennet_flow_key key;
	__u8 flags = ev->l4_proto == PROTO_TCP ? ev->tcp_flags : 0;
	__u8 state = (flags & (TCPF_FIN | TCPF_RST)) ? SENNET_FLOW_ENDED : 0;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(&key.saddr, &ev->saddr, sizeof(key.saddr));
	__builtin_memcpy(&key.daddr, &ev->daddr, sizeof(key.daddr));
	key.ifindex = ev->ifindex;
	key.sport = ev->sport;
	key.dport = ev->dport;
	key.vlan_id = l4->vlan_id;
	key.ip_version = ev->ip_version;
	key.l4_proto = ev->l4_proto;
	key.direction = ev->direction;

	struct sennet_flow *f = flow_at(&key);

	if (!f) {
		struct sennet_flow init;

		__builtin_memset(&init, 0, sizeof(init));
		init.packets = segs;
		init.bytes = bytes;
		init.first_ns = now;
		init.last_ns = now;
		init.tcp_flags = flags;
		init.state = state;
		if (flow_insert(&key, &init) == 0) {
			flow_stat_add(SENNET_FLOW_STAT_CREATED);
			return flow_at(&key);
		}
		f = flow_at(&key); /* another CPU created it first */
		if (!f) {
			flow_stat_add(SENNET_FLOW_STAT_UNTRACKED);
			return 0;
		}
	}
	__sync_fetch_and_add(&f->packets, segs);
	__sync_fetch_and_add(&f->bytes, bytes);
	f->last_ns = now; /* one aligned 8-byte store: never torn */
	if ((f->tcp_flags & flags) != flags || (f->state & state) != state) {
		/* tcp_flags and state share the 8-byte word that starts at
		 * zero_windows: OR them in atomically (zero_windows gains nothing). */
		__u64 bits = ((__u64)flags << 32) | ((__u64)state << 40);

		__sync_fetch_and_or((__u64 *)&f->zero_windows, bits);
	}
	return f;
}

#endif /* SENNET_FLOWS_H */
