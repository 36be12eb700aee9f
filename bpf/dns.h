/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * DNS over UDP port 53: queries, responses, latency, unanswered queries, names.
 * Placeholder entry point: filled in by the DNS work.
 */
#ifndef SENNET_DNS_H
#define SENNET_DNS_H

static __always_inline void dns_observe(struct __sk_buff *skb, const struct sennet_event *ev,
					const struct sennet_l4 *l4, __u64 now)
{
}

#endif /* SENNET_DNS_H */
