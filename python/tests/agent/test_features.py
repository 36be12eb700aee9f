"""The load-time feature switch (cfg_features) on a real kernel, both loaders.

A feature that is off must leave its maps untouched, and whatever is off, the
counters and events must still hold every packet exactly: the interface's own
counters (IFLA_STATS64) are the oracle. The traffic carries something for every
feature: IPv4 UDP and IPv6 TCP flows, a TCP SYN (a pending handshake), a DNS
query (a pending DNS entry) and one frame above the large-packet threshold (one
event).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from sennet.agent.datapath import dns_layout, layout
from sennet.agent.datapath.layout import Feature
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions
from sennet.testing.netlab import VethPair
from tests.datapath_harness import LOADERS, Running, running
from tests.flow_traffic import frame, send_settled

pytestmark = pytest.mark.kernel

LARGE = 1000  # the harness's large-packet threshold


def traffic() -> list[bytes]:
    """Three flows of 3 + 2 + 1 packets, a DNS query, a TCP SYN: 8 frames, one large."""
    udp = frame(IP(src="10.50.0.1", dst="10.50.0.2") / UDP(sport=4000, dport=4001), 0, 20)
    tcp6 = frame(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=5000, dport=80, flags="A"), 0, 10)
    big = frame(IP(src="10.50.0.3", dst="10.50.0.2") / UDP(sport=4002, dport=4001), 0, 1200)
    dns = frame(
        IP(src="10.50.0.1", dst="10.50.0.53")
        / UDP(sport=4053, dport=53)
        / DNS(id=7, rd=1, qd=DNSQR(qname="example.test")),
        0,
        0,
    )
    syn = frame(IP(src="10.50.0.1", dst="10.50.0.2") / TCP(sport=6000, dport=443, flags="S"), 0, 0)
    assert len(big) > LARGE and all(len(f) <= LARGE for f in (udp, tcp6, dns, syn))
    return [udp, tcp6, big, udp, tcp6, udp, dns, syn]


def hash_entries(dp: Running, name: str, key_size: int) -> int:
    """Entries of a hash map by the kernel's own key walk."""
    fd = dp.manager.loaded.map_fds[name]  # type: ignore[union-attr]
    return sum(1 for _ in libbpf().keys(fd, key_size))


def burst_packets(dp: Running) -> int:
    """The busiest 10 ms window of the monitored slot so far (rx), in packets: how many of the
    8 frames share one window depends on the sender's timing, so only "none" is exact."""
    fd = dp.manager.loaded.map_fds[layout.MAP_BURSTS]  # type: ignore[union-attr]
    key = struct.pack("<I", dp.slot * 2 + layout.Direction.RX)
    raw = libbpf().lookup_locked(fd, key, layout.BURST.itemsize)
    assert raw is not None
    max_packets = layout.BURST.unpack(raw)["w10_max_packets"]
    assert isinstance(max_packets, tuple)
    return max(max_packets)


def observed(dp: Running, net: VethPair) -> dict[str, int]:
    """Send the traffic; check the counters and events exactly; what each feature kept."""
    frames = traffic()
    kernel = send_settled(net, frames)
    assert (kernel.rx_packets, kernel.rx_bytes) == (len(frames), sum(map(len, frames)))
    assert dp.totals()["rx"] == (kernel.rx_packets, kernel.rx_bytes)
    assert dp.detected() == {"large_packet": 1} and dp.kinds() == {"large_packet": 1}
    assert dp.drops() == {}
    return {
        "flows": hash_entries(dp, layout.MAP_FLOWS, layout.FLOW_KEY.itemsize),
        "bursts": min(burst_packets(dp), 1),  # 1: some window counted the traffic
        "handshakes": hash_entries(dp, layout.MAP_HANDSHAKES, layout.HS_KEY.itemsize),
        "dns_pending": hash_entries(
            dp, dns_layout.MAP_DNS_PENDING, dns_layout.PENDING_KEY.itemsize
        ),
    }


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("features", "expected"),
    [
        (Feature(0), {"flows": 0, "bursts": 0, "handshakes": 0, "dns_pending": 0}),
        (Feature.FLOWS, {"flows": 5, "bursts": 0, "handshakes": 0, "dns_pending": 0}),
        (Feature.BURSTS, {"flows": 0, "bursts": 1, "handshakes": 0, "dns_pending": 0}),
        (Feature.TCP | Feature.DNS, {"flows": 0, "bursts": 0, "handshakes": 1, "dns_pending": 1}),
        (layout.FEATURES_ALL, {"flows": 5, "bursts": 1, "handshakes": 1, "dns_pending": 1}),
    ],
    ids=["none", "flows", "bursts", "tcp+dns", "all"],
)
def test_a_feature_that_is_off_touches_nothing_and_every_packet_is_still_counted(
    net: VethPair, pin_root: Path, loader: str, features: Feature, expected: dict[str, int]
) -> None:
    with running(net, pin_root / loader, loader, large=LARGE, features=features) as dp:
        assert observed(dp, net) == expected


def test_the_default_load_runs_every_feature() -> None:
    assert layout.FEATURES_ALL == 0xF
    opts = DatapathOptions(Path("/nonexistent"), Path("/nonexistent"), 1 << 16, 1514)
    assert opts.features == layout.FEATURES_ALL
