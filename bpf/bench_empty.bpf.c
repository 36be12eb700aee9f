// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/* Baseline for the benchmarks: a TC program that does nothing, so the cost of
 * sennet_tc.bpf.c can be shown against the fixed cost of running any program. */
#include "compat.h"

SEC("tc")
int sennet_empty(struct __sk_buff *skb)
{
	return SENNET_TC_ACT_UNSPEC;
}

SENNET_LICENSE;
