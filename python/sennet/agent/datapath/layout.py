"""User-space mirror of bpf/sennet_tc.h: map names, event kinds, record layout.

A unit test compiles a probe against the C header and checks every offset and
constant here, so the two cannot drift silently.
"""

from __future__ import annotations

import enum

from sennet.agent.datapath import dns_layout
from sennet.agent.datapath.record import Layout

MAX_IFACES = 64
COUNTER_SLOTS = MAX_IFACES * 2
IFINDEX_LIMIT = 65536  # IFSLOTS is indexed by ifindex
UNMAPPED_SLOT = 0  # packets on an ifindex the agent never registered

OBJECT_NAME = "sennet_tc.bpf.o"  # the compiled data plane (bpf/sennet_tc.bpf.c)
PROGRAM_INGRESS = "sennet_ingress"
PROGRAM_EGRESS = "sennet_egress"
PROGRAM_XDP = "sennet_xdp"  # the receive side at XDP (attach = xdp), same handle() as ingress

MAP_COUNTERS = "COUNTERS"
MAP_IFSLOTS = "IFSLOTS"
MAP_EV_COUNTS = "EV_COUNTS"  # events detected, by kind (cumulative, pinned)
MAP_RB_DROPS = "RB_DROPS"  # events lost because the ring was full, by kind
MAP_EVENTS = "EVENTS"
MAP_HISTOGRAMS = "HISTOGRAMS"
MAP_TCP_COUNTERS = "TCP_COUNTERS"
MAP_HANDSHAKES = "HANDSHAKES"
MAP_FLOW_STATS = "FLOW_STATS"  # flows created (cumulative, pinned), packets left untracked
MAP_FLOWS = "FLOWS"  # the flow LRU: not pinned, sized at load (flow_capacity)
MAP_BURSTS = "BURSTS"  # microburst windows per counter slot
MAP_BURST_EPOCH = "BURST_EPOCH"  # the agent's interval number, read by the programs
PINNED_MAPS: tuple[str, ...] = (
    MAP_COUNTERS,
    MAP_IFSLOTS,
    MAP_EV_COUNTS,
    MAP_RB_DROPS,
    MAP_HISTOGRAMS,
    MAP_TCP_COUNTERS,
    MAP_HANDSHAKES,
    MAP_FLOW_STATS,
)
FLOW_MAPS = (MAP_FLOWS, MAP_BURSTS, MAP_BURST_EPOCH)  # handed to the agent, not pinned
# Under pin_dir: what the boot-time loader pinned besides the maps (its programs, FLOW_MAPS)
# for the agent to adopt (datapath/early.py); emptied once adopted.
EARLY_DIR = "early"

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_RINGBUF = 27

# name -> (type, key size, value size, max entries); checked on every pinned map we reuse.
MAP_SPECS: dict[str, tuple[int, int, int, int]] = {
    MAP_COUNTERS: (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 16, COUNTER_SLOTS),
    MAP_IFSLOTS: (BPF_MAP_TYPE_ARRAY, 4, 4, IFINDEX_LIMIT),
}

TUNABLE_LARGE_PACKET = "cfg_large_packet_bytes"
TUNABLE_FEATURES = "cfg_features"


class Feature(enum.IntFlag):
    """What runs after the counters and events (bpf/sennet_tc.h: SENNET_FEAT_*).

    A load-time switch: a feature that is off is dropped by the verifier, so
    its packets pay nothing for it (bench/features.py shows the price of each).
    """

    FLOWS = 0x1
    BURSTS = 0x2
    TCP = 0x4
    DNS = 0x8


FEATURES_ALL = Feature.FLOWS | Feature.BURSTS | Feature.TCP | Feature.DNS


def features_named(names: tuple[str, ...] | list[str]) -> Feature:
    """The switch for the config's `features` names ("flows", "bursts", "tcp", "dns")."""
    out = Feature(0)
    for name in names:
        out |= Feature[name.upper()]
    return out


class Direction(enum.IntEnum):
    """Counter direction: RX is the TC ingress hook, TX the egress hook."""

    RX = 0
    TX = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class EventKind(enum.IntEnum):
    """Ring-buffer event kinds; values are SENNET_EV_* in sennet_tc.h."""

    LARGE_PACKET = 1
    TCP_NULL = 2
    TCP_SYN_FIN = 3
    TCP_SYN_RST = 4
    TCP_XMAS = 5
    LAND = 6
    IPV4_BAD_IHL = 7
    IPV4_BAD_LEN = 8
    TRUNCATED_L3 = 9
    TRUNCATED_L4 = 10

    @property
    def label(self) -> str:
        return self.name.lower()


EVENT_KINDS = len(EventKind) + 1  # SENNET_EV_KINDS: index 0 unused
MAP_SPECS[MAP_EV_COUNTS] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, EVENT_KINDS)
MAP_SPECS[MAP_RB_DROPS] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, EVENT_KINDS)

EVENT = Layout(
    [
        ("ts_ns", "Q"),
        ("ifindex", "I"),
        ("pkt_len", "I"),
        ("direction", "B"),
        ("kind", "B"),
        ("ip_version", "B"),
        ("l4_proto", "B"),
        ("sport", "H"),
        ("dport", "H"),
        ("eth_proto", "H"),
        ("tcp_flags", "B"),
        ("vlan_tags", "B"),
        ("_pad", "I"),
        ("saddr", "16s"),
        ("daddr", "16s"),
    ]
)
EVENT_SIZE = EVENT.itemsize  # 64

# A ring-buffer record: the kernel's 8-byte header (len, pg_off), then the event, 8-byte aligned.
RINGBUF_HDR_SIZE = 8
RECORD_SIZE = (RINGBUF_HDR_SIZE + EVENT_SIZE + 7) & ~7

# -- flows, latency histograms (sennet_tc.h) ----------------------------------

HIST_BUCKETS = 28  # bucket i: below 2**i microseconds; the last one: +Inf
HIST_SLOTS = HIST_BUCKETS + 1  # then the sum in nanoseconds


class Histogram(enum.IntEnum):
    """Latency histograms kept by the data plane; values are SENNET_HIST_* in sennet_tc.h."""

    DNS_LATENCY = 0
    TCP_SYN = 1  # SYN -> SYN/ACK
    TCP_SYNACK = 2  # SYN/ACK -> ACK


HISTS = len(Histogram)
MAP_SPECS[MAP_HISTOGRAMS] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, HISTS * HIST_SLOTS)

# -- DNS (sennet_dns.h; details in dns_layout.py) ------------------------------

MAP_SPECS[dns_layout.MAP_DNS_COUNTERS] = (
    BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, dns_layout.COUNTER_SLOTS,
)  # fmt: skip
MAP_SPECS[dns_layout.MAP_DNS_PENDING] = (
    BPF_MAP_TYPE_LRU_HASH,
    dns_layout.PENDING_KEY.itemsize,
    dns_layout.PENDING.itemsize,
    dns_layout.PENDING_ENTRIES,
)
MAP_SPECS[dns_layout.MAP_DNS_NAMES] = (
    BPF_MAP_TYPE_LRU_HASH,
    dns_layout.NAME_MAX,
    dns_layout.NAME_COUNT.itemsize,
    dns_layout.NAME_ENTRIES,
)
PINNED_MAPS += (
    dns_layout.MAP_DNS_COUNTERS,
    dns_layout.MAP_DNS_PENDING,
    dns_layout.MAP_DNS_NAMES,
)


def hist_upper_bounds_s() -> tuple[float, ...]:
    """Upper bound of each finite bucket, in seconds (Prometheus `le`)."""
    return tuple((1 << i) / 1e6 for i in range(HIST_BUCKETS - 1))


FLOW_KEY = Layout(
    [
        ("saddr", "16s"),
        ("daddr", "16s"),
        ("ifindex", "I"),
        ("sport", "H"),
        ("dport", "H"),
        ("vlan_id", "H"),
        ("ip_version", "B"),
        ("l4_proto", "B"),
        ("direction", "B"),
        ("_pad", "3s"),
    ]
)
FLOW = Layout(
    [
        ("packets", "Q"),
        ("bytes", "Q"),
        ("first_ns", "Q"),
        ("last_ns", "Q"),
        ("next_seq", "I"),
        ("retrans", "I"),
        ("zero_windows", "I"),
        ("tcp_flags", "B"),
        ("state", "B"),
        ("_pad", "H"),
    ]
)
FLOW_ENDED = 0x01  # FIN or RST seen
FLOW_SEQ_VALID = 0x02

# -- TCP health (sennet_tc.h: SENNET_TCP_*, struct sennet_hs_key, struct sennet_hs) --------


class TcpCounter(enum.IntEnum):
    """Slots of TCP_COUNTERS; values are SENNET_TCP_* in sennet_tc.h."""

    RST_RX = 0
    RST_TX = 1
    RETRANS = 2
    ZERO_WINDOW = 3
    UNANSWERED = 4  # written by the agent, never by the programs
    MALFORMED = 5
    SYN_RETRIED = 6


TCP_SLOTS = 8
TCP_HANDSHAKES = 65536  # HANDSHAKES max_entries by default; set at load (tcp_handshakes_max)
HS_SYN_RETRIED = 0x01
HS_SYNACK_RETRIED = 0x02

HS_KEY = Layout(
    [
        ("client", "16s"),
        ("server", "16s"),
        ("ifindex", "I"),
        ("cport", "H"),
        ("sport", "H"),
        ("vlan_id", "H"),
        ("ip_version", "B"),
        ("_pad", "B"),
    ]
)
HS = Layout(
    [
        ("syn_ns", "Q"),
        ("synack_ns", "Q"),
        ("client_isn", "I"),
        ("server_isn", "I"),
        ("flags", "B"),
        ("_pad", "7s"),
    ]
)
MAP_SPECS[MAP_TCP_COUNTERS] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, TCP_SLOTS)
MAP_SPECS[MAP_HANDSHAKES] = (
    BPF_MAP_TYPE_LRU_HASH,
    HS_KEY.itemsize,
    HS.itemsize,
    TCP_HANDSHAKES,
)
# Maps whose max_entries is a load-time setting: a pinned one is checked against the
# size asked for when there is one (loading), and not at all otherwise (status, check).
SIZED_AT_LOAD = (MAP_HANDSHAKES,)

# -- flow bookkeeping and microbursts (sennet_tc.h, flows.h) -------------------

FLOW_CAPACITY_DEFAULT = 262144  # SENNET_FLOW_CAPACITY; the loaders set the configured size
FLOW_STAT_CREATED = 0
FLOW_STAT_UNTRACKED = 1
FLOW_STAT_ENDED = 2  # this and the next two: written by the agent (tally.py)
FLOW_STAT_LOST = 3
FLOW_STAT_EVICTED = 4
FLOW_STATS = 5
MAP_SPECS[MAP_FLOW_STATS] = (BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, FLOW_STATS)

BURST_WINDOWS_MS = (1, 10)
# struct sennet_burst: a lock, the epoch, then one struct sennet_burst_win per window length
# (end: where the window being filled ends, ns; packets, bytes; max_packets and max_bytes by
# epoch parity), flattened here as w1_* and w10_*.
BURST_WIN_FIELDS = (
    ("end", "Q"),
    ("packets", "Q"),
    ("bytes", "Q"),
    ("max_packets", "2Q"),
    ("max_bytes", "2Q"),
)
BURST = Layout(
    [("lock", "I"), ("epoch", "I")]
    + [(f"w{ms}_{name}", code) for ms in BURST_WINDOWS_MS for name, code in BURST_WIN_FIELDS]
)
