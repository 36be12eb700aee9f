/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/*
 * DNS layouts shared between the TC programs (dns.h) and user space
 * (sennet/agent/datapath/dns_layout.py, checked by a compiled probe).
 *
 * Fixed-width fields, explicit padding: every byte of a hash key is set,
 * because the kernel hashes all of it.
 */
#ifndef SENNET_DNS_LAYOUT_H
#define SENNET_DNS_LAYOUT_H

#define SENNET_DNS_PORT 53

/* DNS_COUNTERS slots (per CPU, cumulative). Queries by QTYPE first. */
#define SENNET_DNS_Q_A         0
#define SENNET_DNS_Q_AAAA      1
#define SENNET_DNS_Q_CNAME     2
#define SENNET_DNS_Q_MX        3
#define SENNET_DNS_Q_NS        4
#define SENNET_DNS_Q_PTR       5
#define SENNET_DNS_Q_SOA       6
#define SENNET_DNS_Q_SRV       7
#define SENNET_DNS_Q_TXT       8
#define SENNET_DNS_Q_HTTPS     9
#define SENNET_DNS_Q_SVCB     10
#define SENNET_DNS_Q_ANY      11
#define SENNET_DNS_Q_OTHER    12
/* Responses by RCODE. */
#define SENNET_DNS_R_NOERROR  13
#define SENNET_DNS_R_NXDOMAIN 14
#define SENNET_DNS_R_SERVFAIL 15
#define SENNET_DNS_R_REFUSED  16
#define SENNET_DNS_R_OTHER    17
#define SENNET_DNS_MALFORMED  18  /* UDP/53 payloads that are not a DNS message we can parse */
#define SENNET_DNS_SEEN       19  /* UDP/53 packets examined: parsed (queries + responses) + malformed */
#define SENNET_DNS_MATCHED    20  /* responses matched to a pending query: latency observed */
#define SENNET_DNS_UNANSWERED 21  /* written by the agent: queries it expired with no response */
#define SENNET_DNS_COUNTERS   22

/* Table sizes (entries). Pending queries: enough for a busy resolver's
 * in-flight queries within the timeout; names: the working set the top-N
 * lists are drawn from. Both LRU: a full table forgets its oldest entry. */
#define SENNET_DNS_PENDING_ENTRIES 16384
#define SENNET_DNS_NAME_ENTRIES    4096

/* A query name as the key of DNS_NAMES: the QNAME in wire format (length-
 * prefixed labels, the root's zero byte included, at most 255 bytes), ASCII
 * upper case folded to lower case, zero-padded to the full size. */
#define SENNET_DNS_NAME_MAX 256

struct sennet_dns_name {
	__u8 bytes[SENNET_DNS_NAME_MAX];
};

struct sennet_dns_name_count {
	__u64 queries;   /* queries asking for this name */
	__u64 failures;  /* responses for it with an RCODE other than NOERROR */
};

/* A query waiting for its response: who asked (the response's destination),
 * from which port, with which transaction id. */
struct sennet_dns_pending_key {
	union sennet_addr client;  /* IPv4 in the first 4 bytes, the rest zero */
	__u16 client_port;         /* host byte order */
	__u16 id;                  /* transaction id */
	__u8 ip_version;           /* 4 or 6 */
	__u8 _pad[3];
};

struct sennet_dns_pending {
	__u64 ts_ns;      /* bpf_ktime_get_ns() when the query passed */
	__u32 name_hash;  /* of the folded QNAME: a response must ask the same question */
	__u16 qtype;
	__u16 _pad;
};

#endif /* SENNET_DNS_LAYOUT_H */
