// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/* Baselines for the benchmarks: a TC and an XDP program that do nothing, so the
 * cost of sennet_tc.bpf.c can be shown against the fixed cost of running any
 * program at that hook. */
#include "compat.h"

SEC("tc")
int sennet_empty(struct __sk_buff *skb)
{
	return SENNET_TC_ACT_UNSPEC;
}

SEC("xdp")
int sennet_empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SENNET_LICENSE;
