"""User-space mirror of bpf/sennet_dns.h: DNS counter slots, table keys and values.

A unit test compiles a probe against the C header and checks every constant,
size and offset here (tests/agent/test_dns_layout.py).
"""

from __future__ import annotations

import enum

from sennet.agent.datapath.record import Layout

MAP_DNS_COUNTERS = "DNS_COUNTERS"  # per CPU, cumulative (pinned)
MAP_DNS_PENDING = "DNS_PENDING"  # queries waiting for a response (LRU, pinned)
MAP_DNS_NAMES = "DNS_NAMES"  # per query name: queries and failures (LRU, pinned)

PENDING_ENTRIES = 16384
NAME_ENTRIES = 4096
NAME_MAX = 256  # the folded wire-format QNAME, zero-padded


class DnsSlot(enum.IntEnum):
    """DNS_COUNTERS slots; values are SENNET_DNS_* in sennet_dns.h."""

    Q_A = 0
    Q_AAAA = 1
    Q_CNAME = 2
    Q_MX = 3
    Q_NS = 4
    Q_PTR = 5
    Q_SOA = 6
    Q_SRV = 7
    Q_TXT = 8
    Q_HTTPS = 9
    Q_SVCB = 10
    Q_ANY = 11
    Q_OTHER = 12
    R_NOERROR = 13
    R_NXDOMAIN = 14
    R_SERVFAIL = 15
    R_REFUSED = 16
    R_OTHER = 17
    MALFORMED = 18
    SEEN = 19  # UDP/53 packets examined: queries + responses + malformed
    MATCHED = 20  # responses matched to their query (latency observed)
    UNANSWERED = 21  # written by the agent: queries it expired with no response (tally.py)


COUNTER_SLOTS = len(DnsSlot)
QUERY_SLOTS = tuple(s for s in DnsSlot if s.name.startswith("Q_"))
RCODE_SLOTS = tuple(s for s in DnsSlot if s.name.startswith("R_"))


def slot_label(slot: DnsSlot) -> str:
    """The report's key: "A", "HTTPS", "NXDOMAIN", ...; "other" for the catch-alls."""
    name = slot.name[2:]
    return "other" if name == "OTHER" else name


PENDING_KEY = Layout(
    [
        ("client", "16s"),
        ("client_port", "H"),
        ("id", "H"),
        ("ip_version", "B"),
        ("_pad", "3s"),
    ]
)
PENDING = Layout([("ts_ns", "Q"), ("name_hash", "I"), ("qtype", "H"), ("_pad", "H")])
NAME_COUNT = Layout([("queries", "Q"), ("failures", "Q")])
