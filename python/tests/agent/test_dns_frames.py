"""The DNS parser on hand-built frames, on a real kernel, with both loaders.

Every malformed case breaks one rule and must be counted as malformed and as
nothing else; the well-formed messages (written by dnspython, not by us) must be
counted by type and rcode, matched query to response, and their names kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sennet.agent.datapath import dns_layout as dl
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.dns import DnsReader
from sennet.testing.dnsframes import (
    WELL_FORMED_COUNTS,
    WELL_FORMED_NAMES,
    malformed_cases,
    query_wire,
    udp4,
    well_formed,
)
from sennet.testing.netlab import VethPair
from tests.datapath_harness import LOADERS, Running, running

pytestmark = pytest.mark.kernel

WELL_FORMED = well_formed()


def reader(dp: Running) -> DnsReader:
    loaded = dp.manager.loaded
    assert loaded is not None
    return DnsReader(loaded.map_fds, timeout_s=5.0, top_names=10)


def state(dns: DnsReader) -> tuple[dict[str, int], dict[str, tuple[int, int]], int]:
    counts = {s.name: v for s, v in dns.counters().items() if v}
    return counts, dns.names(), dns.read().latency.count


@pytest.mark.parametrize("loader", LOADERS)
def test_each_malformed_frame_counts_as_malformed_and_nothing_else(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    cases = malformed_cases()
    with running(net, pin_root / "p", loader) as dp:
        dns = reader(dp)
        for n, case in enumerate(cases, start=1):
            net.send_to_a([case.frame])
            counts = {s.name: v for s, v in dns.counters().items() if v}
            assert counts == {"SEEN": n, "MALFORMED": n}, case.name
        assert dns.names() == {}
        assert dp.totals()["rx"][0] == len(cases)


@pytest.mark.parametrize("loader", LOADERS)
def test_well_formed_messages_are_counted_matched_and_named(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    with running(net, pin_root / "p", loader) as dp:
        dns = reader(dp)
        net.send_to_a(WELL_FORMED)
        counts, names, latencies = state(dns)
        report = dns.read()
    assert counts == WELL_FORMED_COUNTS
    # Names folded to lower case in the kernel: the two spellings are one entry.
    assert names == WELL_FORMED_NAMES
    assert latencies == 2
    assert [(n.name, n.count) for n in report.top_queried] == [
        ("v6.example", 1),
        ("www.example.com", 1),
    ]
    assert [(n.name, n.count) for n in report.top_failing] == [
        ("stray.example", 1),
        ("www.example.com", 1),
    ]
    assert report.queries_by_type["A"] == report.queries_by_type["AAAA"] == 1
    assert sum(report.queries_by_type.values()) == 2
    assert report.responses_by_rcode == {
        "NOERROR": 1,
        "NXDOMAIN": 1,
        "SERVFAIL": 0,
        "REFUSED": 1,
        "other": 0,
    }


def test_both_loaders_give_identical_dns_counts_names_and_pending_queries(
    net: VethPair, pin_root: Path
) -> None:
    frames = [c.frame for c in malformed_cases()] + WELL_FORMED
    frames += [udp4(query_wire(f"q{i}.example", "MX", 0x5000 + i)) for i in range(7)]
    results = {}
    for loader in LOADERS:
        with running(net, pin_root / loader, loader) as dp:
            dns = reader(dp)
            net.send_to_a(frames)
            net.send_from_a(frames[-3:])  # the same queries again, on egress
            pending = sorted(libbpf().keys(dns.pending_fd, dl.PENDING_KEY.itemsize))
            results[loader] = (state(dns), pending)
    assert results["libbpf"] == results["bcc"]
    (counts, names, _), pending = results["libbpf"]
    assert counts["SEEN"] == len(frames) + 3
    assert counts["MALFORMED"] == len(malformed_cases())
    assert counts["Q_MX"] == 10
    assert len(pending) == 7  # the repeats replaced their own entries
    assert names["q6.example"] == (2, 0)
