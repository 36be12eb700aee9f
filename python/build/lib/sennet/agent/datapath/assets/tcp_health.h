/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * TCP health: handshake RTT, attempts that never complete, resets,
 * retransmitted or out-of-order segments, zero-window advertisements.
 *
 * Handshakes. A SYN (no ACK) opens an entry in HANDSHAKES keyed by the
 * connection as the client sees it; the SYN/ACK travels the other way, so it
 * is looked up by the reversed tuple, whichever hook it crosses (on a mirror
 * port both arrive on ingress; on a host one leaves on egress and the other
 * arrives on ingress). SYN -> SYN/ACK is the round trip from the tap point to
 * the server and back; SYN/ACK -> the client's first ACK the round trip from
 * the tap point to the client and back. Karn's rule: a retransmitted SYN (same
 * ISN) keeps the first SYN's time but the SYN -> SYN/ACK sample is not taken
 * (the SYN/ACK may answer any copy); likewise a retransmitted SYN/ACK spoils
 * the SYN/ACK -> ACK sample. The client's ACK ends the entry; so does a RST
 * either way (the attempt was answered). Entries that never see a SYN/ACK are
 * expired by the agent after tcp_handshake_timeout and counted unanswered.
 *
 * Retransmissions. With the flow (one direction of the conversation) the
 * flow table passes in, a segment that occupies sequence space (payload, plus
 * one for SYN and for FIN) and starts before the flow's next_seq (serial
 * arithmetic) counts as `segs` retransmitted or out-of-order segments; next_seq
 * then moves to the end of the whole aggregate if that is further. Without a
 * flow (table full, not built) only handshakes are recognised: a SYN or
 * SYN/ACK repeating the ISN of a pending handshake.
 */
#ifndef SENNET_TCP_HEALTH_H
#define SENNET_TCP_HEALTH_H

#ifdef SENNET_BCC
BPF_TABLE_PINNED("lru_hash", struct sennet_hs_key, struct sennet_hs, HANDSHAKES,
		 SENNET_TCP_HANDSHAKES, SENNET_PIN_DIR "/HANDSHAKES");
#else
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SENNET_TCP_HANDSHAKES);
	__type(key, struct sennet_hs_key);
	__type(value, struct sennet_hs);
} HANDSHAKES SEC(".maps");
#endif
SENNET_PERCPU_ARRAY(TCP_COUNTERS, __u32, __u64, SENNET_TCP_SLOTS);

/* Map accessors, one branch per dialect (see compat.h). */
#ifdef SENNET_BCC
static __always_inline struct sennet_hs *hs_find(struct sennet_hs_key *k) { return HANDSHAKES.lookup(k); }
static __always_inline void hs_open(struct sennet_hs_key *k, struct sennet_hs *v) { HANDSHAKES.update(k, v); }
static __always_inline void hs_forget(struct sennet_hs_key *k) { HANDSHAKES.delete(k); }
static __always_inline __u64 *tcp_counter_at(__u32 *k) { return TCP_COUNTERS.lookup(k); }
#else
static __always_inline struct sennet_hs *hs_find(struct sennet_hs_key *k) { return bpf_map_lookup_elem(&HANDSHAKES, k); }
static __always_inline void hs_open(struct sennet_hs_key *k, struct sennet_hs *v) { bpf_map_update_elem(&HANDSHAKES, k, v, BPF_ANY); }
static __always_inline void hs_forget(struct sennet_hs_key *k) { bpf_map_delete_elem(&HANDSHAKES, k); }
static __always_inline __u64 *tcp_counter_at(__u32 *k) { return bpf_map_lookup_elem(&TCP_COUNTERS, k); }
#endif

/* After this many packets a flow's handshake is long over: its ACKs skip the
 * HANDSHAKES lookup (seven SYNs, the kernel's default retries, plus the ACK). */
#define SENNET_TCP_HANDSHAKE_PACKETS 16

static __always_inline void tcp_count(__u32 slot, __u32 n)
{
	__u64 *c = tcp_counter_at(&slot);

	if (c)
		*c += n;
}

/* The connection as its client sees it: the sender of this packet is the
 * client (`reversed` 0: a SYN, the client's ACK) or the server (1: a SYN/ACK). */
static __always_inline void hs_key(struct sennet_hs_key *k, const struct sennet_event *ev,
				   __u16 vlan_id, int reversed)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (reversed) {
		__builtin_memcpy(&k->client, &ev->daddr, sizeof(k->client));
		__builtin_memcpy(&k->server, &ev->saddr, sizeof(k->server));
		k->cport = ev->dport;
		k->sport = ev->sport;
	} else {
		__builtin_memcpy(&k->client, &ev->saddr, sizeof(k->client));
		__builtin_memcpy(&k->server, &ev->daddr, sizeof(k->server));
		k->cport = ev->sport;
		k->sport = ev->dport;
	}
	k->ifindex = ev->ifindex;
	k->vlan_id = vlan_id;
	k->ip_version = ev->ip_version;
}

/* A SYN without ACK: open the entry, or note a retransmission of its SYN. */
static __always_inline void hs_syn(const struct sennet_event *ev, __u16 vlan, __u32 seq, int have_flow,
				   __u64 now)
{
	struct sennet_hs_key k;
	struct sennet_hs *hs;

	hs_key(&k, ev, vlan, 0);
	hs = hs_find(&k);
	if (hs && hs->client_isn == seq) {
		hs->flags |= SENNET_HS_SYN_RETRIED;
		tcp_count(SENNET_TCP_SYN_RETRIED, 1);
		if (!have_flow)
			tcp_count(SENNET_TCP_RETRANS, 1);
		return;
	}
	/* New, or the same ports reused with a new ISN: a new attempt. */
	struct sennet_hs fresh = {};

	fresh.syn_ns = now;
	fresh.client_isn = seq;
	hs_open(&k, &fresh);
}

/* A SYN/ACK: the server answers a pending SYN. */
static __always_inline void hs_synack(const struct sennet_event *ev, __u16 vlan, __u32 seq, int have_flow,
				      __u64 now)
{
	struct sennet_hs_key k;
	struct sennet_hs *hs;

	hs_key(&k, ev, vlan, 1);
	hs = hs_find(&k);
	if (!hs)
		return;
	if (hs->synack_ns == 0) {
		hs->synack_ns = now;
		hs->server_isn = seq;
		if (!(hs->flags & SENNET_HS_SYN_RETRIED))
			hist_observe(SENNET_HIST_TCP_SYN, now - hs->syn_ns);
	} else if (hs->server_isn == seq) {
		hs->flags |= SENNET_HS_SYNACK_RETRIED;
		if (!have_flow)
			tcp_count(SENNET_TCP_RETRANS, 1);
	}
}

/* An ACK from the client's side: the handshake is complete. */
static __always_inline void hs_ack(const struct sennet_event *ev, __u16 vlan, __u64 now)
{
	struct sennet_hs_key k;
	struct sennet_hs *hs;

	hs_key(&k, ev, vlan, 0);
	hs = hs_find(&k);
	if (!hs)
		return;
	/* An ACK with no SYN/ACK seen: the tap missed it, yet the handshake is
	 * done. Forget the entry (not unanswered), take no sample. */
	if (hs->synack_ns && !(hs->flags & SENNET_HS_SYNACK_RETRIED))
		hist_observe(SENNET_HIST_TCP_SYNACK, now - hs->synack_ns);
	hs_forget(&k);
}

/* A RST from either side answers the attempt. */
static __always_inline void hs_reset(const struct sennet_event *ev, __u16 vlan)
{
	struct sennet_hs_key k;

	hs_key(&k, ev, vlan, 0);
	hs_forget(&k);
	hs_key(&k, ev, vlan, 1);
	hs_forget(&k);
}

/* Sequence space: does this segment start before what the flow already sent? */
static __always_inline void seq_observe(struct sennet_flow *flow, __u32 seq, __u32 span, __u32 segs)
{
	if (!(flow->state & SENNET_FLOW_SEQ_VALID)) {
		flow->next_seq = seq + span;
		flow->state |= SENNET_FLOW_SEQ_VALID;
		return;
	}
	if (span == 0)
		return; /* a pure ACK, a window update, a keep-alive: no sequence space */
	if ((__s32)(seq - flow->next_seq) < 0) {
		flow->retrans += segs;
		tcp_count(SENNET_TCP_RETRANS, segs);
	}
	if ((__s32)(seq + span - flow->next_seq) > 0)
		flow->next_seq = seq + span;
}

/* Under libbpf run as a global function (tcp_health_tc/_xdp below, one per
 * hook), checked once on its own like emit(): the
 * TCP paths then add nothing to the verification of every parse outcome
 * (anything computed for it in handle() would: on the 6.1 verifier, one more
 * stack value there multiplied the states past the 1M-instruction limit). bcc
 * keeps it inline. Its arguments are arbitrary to the verifier, so every value
 * is checked here. Five arguments, the most a BPF call takes: the segment
 * count is read from the context, as handle() does.
 *
 * An IPv6 payload length may claim more than the frame holds (IPv4's total
 * length is already held to the frame by the parser): the payload then ends
 * with the frame. */
static __always_inline int tcp_health(void *ctx, const int hook, const struct sennet_event *ev,
				      const struct sennet_l4 *l4, struct sennet_flow *flow, __u64 now)
{
	if (!ctx || !ev || !l4)
		return 0;

	__u8 f = ev->tcp_flags;
	__u32 hdr_end = l4->hdr_end;
	__u32 limit = l4->limit;
	__u32 segs = pkt_gso_segs(ctx, hook);
	__u32 len = pkt_len(ctx, hook);

	if (segs < 1)
		segs = 1;
	if (limit > len)
		limit = len;
	if (hdr_end < l4->l4_off + 20 || hdr_end > limit) {
		tcp_count(SENNET_TCP_MALFORMED, 1);
		return 0;
	}
	if (f & TCPF_RST) {
		tcp_count(SENNET_TCP_RST_RX + (ev->direction & 1), 1);
		hs_reset(ev, l4->vlan_id);
		return 0;
	}
	if (l4->window == 0) {
		tcp_count(SENNET_TCP_ZERO_WINDOW, segs);
		if (flow)
			flow->zero_windows += segs;
	}
	if (f & TCPF_SYN) {
		if (f & TCPF_ACK)
			hs_synack(ev, l4->vlan_id, l4->seq, flow != 0, now);
		else
			hs_syn(ev, l4->vlan_id, l4->seq, flow != 0, now);
	} else if ((f & TCPF_ACK) && (!flow || flow->packets <= SENNET_TCP_HANDSHAKE_PACKETS)) {
		hs_ack(ev, l4->vlan_id, now);
	}
	if (flow) {
		__u32 span = limit - hdr_end + !!(f & TCPF_SYN) + !!(f & TCPF_FIN);

		seq_observe(flow, l4->seq, span, segs);
	}
	return 0;
}

/* One global function per hook (a global function's context argument has
 * one type), both around the same tcp_health() body. */
#ifndef SENNET_BCC
__attribute__((noinline)) int tcp_health_tc(struct __sk_buff *skb, const struct sennet_event *ev,
					    const struct sennet_l4 *l4, struct sennet_flow *flow,
					    __u64 now)
{
	return tcp_health(skb, SENNET_HOOK_TC, ev, l4, flow, now);
}

__attribute__((noinline)) int tcp_health_xdp(struct xdp_md *xdp, const struct sennet_event *ev,
					     const struct sennet_l4 *l4, struct sennet_flow *flow,
					     __u64 now)
{
	return tcp_health(xdp, SENNET_HOOK_XDP, ev, l4, flow, now);
}
#endif

/* The entry point handle() calls for every TCP segment with a header. */
static __always_inline void tcp_observe(void *ctx, const int hook, const struct sennet_event *ev,
					const struct sennet_l4 *l4, struct sennet_flow *flow,
					__u32 segs, __u64 now)
{
#ifdef SENNET_BCC
	tcp_health(ctx, hook, ev, l4, flow, now);
#else
	if (hook == SENNET_HOOK_XDP)
		tcp_health_xdp(ctx, ev, l4, flow, now);
	else
		tcp_health_tc(ctx, ev, l4, flow, now);
#endif
}

#endif /* SENNET_TCP_HEALTH_H */
