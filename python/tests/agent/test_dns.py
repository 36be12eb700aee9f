"""DNS on a real kernel against a real DNS server: the client's own view is the oracle.

dnsmasq answers in a namespace of its own (behind a relay that holds every
answer 40 ms: the imposed delay), dnspython asks from the monitored side.
Every count Sennet reports is compared with what the client sent and got back;
the latency histogram with the relay's holds and the client's round trips.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from sennet.agent import config
from sennet.agent.datapath import dns_layout as dl
from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.dns import DnsReader
from sennet.agent.insights import Insights
from sennet.agent.telemetry import DnsReport, NameCount
from sennet.testing.dnslab import Asked, address, ask, delaying_relay, dnsmasq, upstream
from sennet.testing.netlab import VethPair
from tests.datapath_harness import LOADERS, running

pytestmark = pytest.mark.kernel

CLIENT, SERVER, SILENT = "10.53.0.1", "10.53.0.2", "10.53.0.3"
DELAY_S = 0.040  # well inside the bucket [32.768 ms, 65.536 ms)
BUCKET = 16  # bucket i: below 2**i us
QTYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "SVCB", "ANY")
RCODES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")

# dnsmasq: A records for ok.test, NXDOMAIN for the rest of test., fail.test. forwarded to
# an upstream that answers SERVFAIL, and REFUSED for everything else (no server for it).
QUESTIONS = (
    [("ok.test", "A")] * 6
    + [("OK.Test", "A"), ("ok.TEST", "A")]  # one name, three spellings
    + [("ok.test", t) for t in QTYPES[1:]]
    + [("ok.test", "CAA"), ("ok.test", "NAPTR")]  # "other" types
    + [("missing.test", "A")] * 4
    + [("gone.test", "MX")] * 2
    + [("x.fail.test", "A")] * 3
    + [("y.fail.test", "TXT")]
    + [("elsewhere.example", "A")] * 2
)


def label(value: str, known: tuple[str, ...]) -> str:
    return value if value in known else "other"


@pytest.fixture
def server(net: VethPair, tmp_path: Path) -> Iterator[list[float]]:
    """The DNS server side; yields the relay's list of holds (one per answer)."""
    address(net.ns_a, net.if_a, f"{CLIENT}/24")
    address(net.ns_b, net.if_b, f"{SERVER}/24")
    address(net.ns_b, net.if_b, f"{SILENT}/24")  # nothing listens there
    records = [
        "--address=/ok.test/192.0.2.1",
        "--local=/test/",
        "--server=/fail.test/127.0.0.1#5300",
    ]
    with (
        upstream(net.ns_b, 5300, dns.rcode.SERVFAIL),
        dnsmasq(net.ns_b, "127.0.0.1", 5353, tmp_path, records),
        delaying_relay(net.ns_b, (SERVER, 53), ("127.0.0.1", 5353), DELAY_S) as holds,
    ):
        yield holds


def top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    return sorted(((k, v) for k, v in counter.items() if v), key=lambda x: (-x[1], x[0]))[:n]


def expected_report(asked: list[Asked]) -> tuple[dict[str, int], dict[str, int]]:
    by_type = {t: 0 for t in (*QTYPES, "other")}
    by_rcode = {r: 0 for r in (*RCODES, "other")}
    for a in asked:
        by_type[label(a.rdtype, QTYPES)] += 1
        if a.rcode is not None:
            by_rcode[label(a.rcode, RCODES)] += 1
    return by_type, by_rcode


@pytest.mark.parametrize("loader", LOADERS)
def test_counts_by_type_and_rcode_latency_and_names_match_the_client(
    net: VethPair, pin_root: Path, server: list[float], loader: str
) -> None:
    with running(net, pin_root / "p", loader) as dp:
        loaded = dp.manager.loaded
        assert loaded is not None
        reader = DnsReader(loaded.map_fds, timeout_s=5.0, top_names=3)
        asked = [ask(net.ns_a, SERVER, name, rdtype) for name, rdtype in QUESTIONS]
        report = reader.read()
        matched = reader.counters()[dl.DnsSlot.MATCHED]
        pending = list(libbpf().keys(reader.pending_fd, dl.PENDING_KEY.itemsize))

    assert all(a.rcode is not None for a in asked), "the server answered every question"
    by_type, by_rcode = expected_report(asked)
    assert report.queries_by_type == by_type
    assert report.responses_by_rcode == by_rcode
    # What the client got, for the record: every kind of answer was exercised.
    assert min(by_rcode[r] for r in RCODES) >= 2, by_rcode

    n = len(asked)
    assert (matched, pending, report.unanswered_total, report.malformed_total) == (n, [], 0, 0)
    # Every answer was held DELAY_S by the relay (a real-time thread, so the hold is the
    # delay on the path); Sennet measured between the query leaving and the answer
    # arriving, so each sample lies between the relay's hold and the client's own round
    # trip. The client's round trips themselves are not bounded here: the client is an
    # ordinary thread, and on a busy machine it may wake late after the answer is in.
    assert len(server) == n and min(server) >= DELAY_S
    spread = ([round(a.rtt_s * 1e3, 2) for a in asked], [round(h * 1e3, 2) for h in server])
    bounds = layout.hist_upper_bounds_s()
    assert bounds[BUCKET - 1] <= DELAY_S < bounds[BUCKET]  # the bucket holding the delay
    assert report.latency.counts[BUCKET] == report.latency.count == n, spread
    assert sum(server) <= report.latency.sum_s <= sum(a.rtt_s for a in asked)

    queried = Counter(a.name.lower() for a in asked)
    failing = Counter(a.name.lower() for a in asked if a.rcode != "NOERROR")
    assert [(x.name, x.count) for x in report.top_queried] == top(queried, 3)
    assert [(x.name, x.count) for x in report.top_failing] == top(failing, 3)
    assert report.top_queried[0] == NameCount("ok.test", queried["ok.test"])


def test_queries_never_answered_count_once_after_the_timeout(
    net: VethPair, pin_root: Path, server: list[float]
) -> None:
    timeout_s = 3.0  # well past the 4 lost queries and the 3 answered ones
    with running(net, pin_root / "p") as dp:
        loaded = dp.manager.loaded
        assert loaded is not None
        reader = DnsReader(loaded.map_fds, timeout_s=timeout_s, top_names=10)
        lost = [ask(net.ns_a, SILENT, f"q{i}.ok.test", "A", timeout=0.25) for i in range(4)]
        last_lost = time.monotonic()
        answered = [ask(net.ns_a, SERVER, "ok.test", "A") for _ in range(3)]
        early = reader.read()
        early_pending = len(list(libbpf().keys(reader.pending_fd, 24)))
        time.sleep(max(0.0, last_lost + timeout_s + 0.2 - time.monotonic()))
        late = reader.read()
        again = reader.read()
        late_pending = len(list(libbpf().keys(reader.pending_fd, 24)))

    timeouts = sum(a.rcode is None for a in lost + answered)
    assert (timeouts, [a.rcode for a in answered]) == (4, ["NOERROR"] * 3)
    assert (early.unanswered_total, early_pending) == (0, timeouts)
    assert (late.unanswered_total, late_pending) == (timeouts, 0)
    assert again.unanswered_total == timeouts  # cumulative, never counted twice
    assert late.queries_by_type["A"] == 7
    assert late.responses_by_rcode["NOERROR"] == 3
    assert late.latency.count == 3


def test_insights_fill_the_dns_report_from_the_settings(
    net: VethPair, pin_root: Path, server: list[float]
) -> None:
    cfg = config.build(
        None, environ={}, flags={"interfaces": ["mon0"], "dns_top_names": 1, "dns_timeout": 9.5}
    )
    with running(net, pin_root / "p") as dp:
        loaded = dp.manager.loaded
        assert loaded is not None
        insights = Insights(loaded.map_fds, cfg)
        for name in ("a.ok.test", "b.ok.test", "b.ok.test"):
            ask(net.ns_a, SERVER, name, "A")
        insights.refresh(())
        report = insights.latest.dns
    assert isinstance(report, DnsReport)
    assert insights.dns.timeout_ns == 9_500_000_000
    assert report.top_queried == (NameCount("b.ok.test", 2),)
    assert report.queries_by_type["A"] == 3
