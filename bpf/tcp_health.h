/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * TCP health: handshake RTT, attempts that never complete, resets,
 * retransmissions, zero windows. Placeholder entry point: filled in by the TCP work.
 */
#ifndef SENNET_TCP_HEALTH_H
#define SENNET_TCP_HEALTH_H

static __always_inline void tcp_observe(struct __sk_buff *skb, const struct sennet_event *ev,
					const struct sennet_l4 *l4, struct sennet_flow *flow,
					__u32 segs, __u64 now)
{
}

#endif /* SENNET_TCP_HEALTH_H */
