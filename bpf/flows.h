/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * Flows and microbursts. Placeholder entry points: filled in by the flows work.
 */
#ifndef SENNET_FLOWS_H
#define SENNET_FLOWS_H

/* Per interface slot and direction: the busiest 1 ms and 10 ms windows. */
static __always_inline void burst_account(__u32 slot, __u32 dir, __u32 segs, __u32 bytes, __u64 now)
{
}

/* Count the packet in its flow (created on first sight); returns the flow for
 * the TCP health checks, or NULL. */
static __always_inline struct sennet_flow *flow_account(const struct sennet_event *ev,
							const struct sennet_l4 *l4, __u32 segs,
							__u32 bytes, __u64 now)
{
	return 0;
}

#endif /* SENNET_FLOWS_H */
