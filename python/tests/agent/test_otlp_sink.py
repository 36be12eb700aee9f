"""The OTLP sink against a real OTLP receiver (official services, real sockets): transports,
resource, start times, the OTLP failure rules, failover and the byte-bounded queue.

Snapshots here are built by the test, so the expected figures are the test's own; the
agent-process tests (test_otlp_agent.py) compare with the kernel's counters instead."""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sennet.agent.sinks.otlp.transport import LOGS, METRICS
from sennet.testing.otlp_receiver import OtlpReceiver, Tls, attributes
from sennet.testing.pki import make_pki
from tests.agent.otlp_helpers import RX, options, sink_for, snap


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_metrics_and_logs_arrive_with_headers_resource_and_stable_start_times(
    protocol: str,
) -> None:
    with OtlpReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        sink = sink_for(options(endpoint, headers=(("x-api-key", "s3cret"),)), "agent-42")
        try:
            sink.send(snap(42, events=2))
            assert sink.flush(10)
            first = rx.latest_points("sennet.interface.packets")
            sink.send(snap(50, uptime=2.0))
            assert sink.flush(10)
        finally:
            sink.close()
        assert rx.value("sennet.interface.packets", **RX) == 50
        assert rx.value("sennet.interface.bytes", **RX) == 5000
        assert rx.value("sennet.events", **{"sennet.event.kind": "large_packet"}) == 50
        (key,) = [k for k in first if dict(k) == RX]
        second = rx.latest_points("sennet.interface.packets")[key]
        assert second.start_time_unix_nano == first[key].start_time_unix_nano
        assert second.time_unix_nano > first[key].time_unix_nano
        arrivals = rx.arrivals
        assert {a.headers.get("x-api-key") for a in arrivals} == {"s3cret"}
        assert all(a.gzip for a in arrivals) if protocol == "http" else True
        assert {a.transport for a in arrivals} == {protocol}
        resource = attributes(arrivals[0].request.resource_metrics[0].resource.attributes)  # type: ignore[union-attr]
        assert resource["service.name"] == "sennet-agent"
        assert resource["host.id"] == resource["service.instance.id"] == "agent-42"
        assert (resource["os.type"], resource["os.version"]) == ("linux", platform.release())
        bodies = [r.body.string_value for r in rx.log_records()]
        assert sorted(bodies) == sorted(
            ["large_packet", "large_packet", "agent.started", "agent.attached", "agent.stopping"]
        )
        events = [r for r in rx.log_records() if r.body.string_value == "large_packet"]
        assert [attributes(r.attributes)["source.port"] for r in events] == [1000, 1001]


def test_a_counter_that_goes_back_starts_a_new_series() -> None:
    with OtlpReceiver() as rx:
        sink = sink_for(options(rx.grpc_endpoint))
        try:
            starts = []
            for n in (10, 20, 5, 6):  # the pinned maps were recreated between 20 and 5
                sink.send(snap(n))
                assert sink.flush(10)
                (point,) = [
                    p for k, p in rx.latest_points("sennet.interface.packets").items()
                    if dict(k) == RX
                ]  # fmt: skip
                starts.append((point.as_int, point.start_time_unix_nano, point.time_unix_nano))
        finally:
            sink.close()
    assert starts[0][1] == starts[1][1]
    assert starts[2][1] == starts[1][2]  # new start: the previous point's time
    assert starts[3][1] == starts[2][1]
    assert [s[0] for s in starts] == [10, 20, 5, 6]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_throttling_hint_delays_the_next_attempt_at_least_that_long(protocol: str) -> None:
    with OtlpReceiver() as rx:
        rx.fail("throttle", times=1, retry_after_s=2.0, signal=METRICS)
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        # One throttled try and one answered: the answer must not time out on a loaded
        # machine (2 s did once, beside another worker) and count as a second retry.
        sink = sink_for(options(endpoint, timeout_s=10.0))
        try:
            sink.send(snap(3))
            assert sink.flush(10)
        finally:
            sink.close()
        tries = [a for a in rx.arrivals if a.signal == METRICS]
        assert [a.answer for a in tries[:2]] == ["throttle", "ok"]
        waited = tries[1].at - tries[0].at
        assert waited >= 2.0, waited
        assert sink.stats().retries[METRICS] == 1


@pytest.mark.parametrize(
    ("protocol", "fault"), [("grpc", "exhausted"), ("grpc", "invalid"), ("http", "invalid")]
)
def test_a_permanent_refusal_is_not_retried_and_its_points_are_counted_as_failed(
    protocol: str, fault: str
) -> None:
    """RESOURCE_EXHAUSTED without RetryInfo, INVALID_ARGUMENT, HTTP 400: dropped, counted."""
    with OtlpReceiver() as rx:
        rx.fail(fault, times=1, signal=METRICS)
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        sink = sink_for(options(endpoint))
        try:
            sink.send(snap(3))
            assert sink.flush(10)
        finally:
            sink.close()
        (refused,) = [a for a in rx.arrivals if a.signal == METRICS]
        assert refused.answer == fault
        points = 0
        for rm in refused.request.resource_metrics:  # type: ignore[union-attr]
            for m in rm.scope_metrics[0].metrics:
                kind = m.WhichOneof("data")
                points += len(getattr(m, kind).data_points) if kind else 0
        assert (sink.stats().failed[METRICS], sink.stats().retries[METRICS]) == (points, 0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_partial_success_is_counted_exactly_and_exported_next_time(
    protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sennet.agent.sinks.otlp")
    with OtlpReceiver() as rx:
        rx.fail("partial", times=1, rejected=7, signal=METRICS)
        rx.fail("partial", times=1, rejected=1, signal=LOGS)
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        sink = sink_for(options(endpoint))
        try:
            sink.send(snap(3, events=2))
            assert sink.flush(10)
            sink.send(snap(4))
            assert sink.flush(10)
            stats = sink.stats()
        finally:
            sink.close()
        assert (stats.rejected[METRICS], stats.rejected[LOGS]) == (7, 1)
        said = [r for r in caplog.records if r.getMessage() == "otlp_partial_success"]
        logged = [(r.fields["rejected"], r.fields["message"]) for r in said]  # type: ignore[attr-defined]
        assert logged == [(7, "told to reject"), (1, "told to reject")]
        assert rx.value("sennet.agent.otlp.rejected", signal="metrics") == 7.0
        assert rx.value("sennet.agent.otlp.rejected", signal="logs") == 1.0
        sent_logs = 4  # two events, started, attached
        assert rx.value("sennet.agent.otlp.exported", signal="logs") == sent_logs - 1


def test_failover_reaches_the_second_endpoint_within_an_interval_and_fails_back() -> None:
    with OtlpReceiver() as first, OtlpReceiver() as second:
        first.stop()
        sink = sink_for(options(first.grpc_endpoint, second.http_endpoint))
        try:
            started = time.monotonic()
            sink.send(snap(1))
            assert sink.flush(5)
            assert time.monotonic() - started < 1.0
            assert second.value("sennet.interface.packets", **RX) == 1
            first.start()
            n = 1
            deadline = time.monotonic() + 10
            while first.value("sennet.interface.packets", **RX) is None:
                assert time.monotonic() < deadline, "never returned to the first endpoint"
                n += 1
                sink.send(snap(n))
                assert sink.flush(5)
                time.sleep(0.2)
            assert first.value("sennet.interface.packets", **RX) == n
            assert sink.stats().failovers == 2
            assert first.value("sennet.agent.otlp.failovers") == 1.0  # counted before this send
        finally:
            sink.close()


def test_without_failback_the_sink_stays_on_the_endpoint_that_works() -> None:
    with OtlpReceiver() as first, OtlpReceiver() as second:
        first.stop()
        sink = sink_for(options(first.grpc_endpoint, second.grpc_endpoint, failback=False))
        try:
            sink.send(snap(1))
            assert sink.flush(5)
            first.start()
            for n in range(2, 8):
                time.sleep(0.2)
                sink.send(snap(n))
                assert sink.flush(5)
        finally:
            sink.close()
        assert second.value("sennet.interface.packets", **RX) == 7
        assert first.arrivals == []


def test_while_the_receiver_is_down_the_queue_stays_within_its_bytes_and_counts_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sennet.agent.sinks.otlp")
    limit = 48 * 1024
    with OtlpReceiver() as rx:
        rx.stop()
        sink = sink_for(options(rx.http_endpoint, queue_bytes=limit))
        produced_logs = 0
        try:
            for n in range(1, 41):
                sink.send(snap(n, events=20, uptime=float(n)))
                produced_logs += 20 + (2 if n == 1 else 0)  # started, attached with the first
                assert sink.queue.bytes <= limit
            assert sink.queue.peak_bytes <= limit
            dropped = sink.stats().dropped
            assert dropped[METRICS] > 0  # older metrics batches went first ...
            time.sleep(2.0)  # several backoff rounds against the closed port
            rx.start()
            sink.send(snap(41, uptime=41.0))
            assert sink.flush(10)
            stats = sink.stats()
        finally:
            sink.close()
        # ... and every log record is either at the receiver or counted as dropped.
        got = [r for r in rx.log_records() if r.body.string_value != "agent.stopping"]
        assert len(got) + stats.dropped[LOGS] == produced_logs
        assert rx.value("sennet.interface.packets", **RX) == 41
        assert rx.value("sennet.agent.otlp.dropped", signal="logs") == float(stats.dropped[LOGS])
        failures = [r for r in caplog.records if r.getMessage() == "otlp_export_failed"]
        assert failures and all(r.levelno == logging.WARNING for r in failures)
        # send() only queues: every attempt against the closed port ran on the export
        # thread, never on the caller's (the heartbeat loop must not wait for a collector)
        assert {r.thread for r in failures}.isdisjoint({threading.get_ident()})
        for r in failures:  # equal jitter: between half and all of 0.05 s doubled, capped at 0.4
            fields = r.fields  # type: ignore[attr-defined]
            cap = min(0.4, 0.05 * 2 ** (fields["failures"] - 1))
            assert cap / 2 - 0.001 <= fields["retry_in_s"] <= cap + 0.001, fields
        assert max(r.fields["failures"] for r in failures) >= 5  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tls_verifies_the_server_name_and_presents_a_client_certificate(
    protocol: str, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path, "collector.test")
    tls = Tls(pki["srv"], pki["srv-key"], client_ca=pki["ca"])
    with OtlpReceiver(tls=tls) as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        good = options(endpoint, tls_ca=str(pki["ca"]), tls_server_name="collector.test",
                       tls_cert=str(pki["cli"]), tls_key=str(pki["cli-key"]))  # fmt: skip
        sink = sink_for(good)
        try:
            sink.send(snap(9))
            assert sink.flush(10)
        finally:
            sink.close()
        assert rx.value("sennet.interface.packets", **RX) == 9
        for bad in (replace(good, tls_server_name="other.test"), replace(good, tls_cert="",
                                                                          tls_key="")):  # fmt: skip
            sink = sink_for(bad)
            try:
                sink.send(snap(10))
                assert not sink.flush(1.0)
                assert sink.stats().retries[METRICS] >= 1
            finally:
                sink.close()
        assert rx.value("sennet.interface.packets", **RX) == 9


@pytest.mark.parametrize(("protocol", "fault"), [("grpc", "unavailable"), ("http", "http_503")])
def test_a_transient_refusal_is_retried_until_the_batch_is_delivered(
    protocol: str, fault: str
) -> None:
    with OtlpReceiver() as rx:
        rx.fail(fault, times=2, signal=METRICS)
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        sink = sink_for(options(endpoint))
        try:
            sink.send(snap(8))
            assert sink.flush(10)
        finally:
            sink.close()
        answers = [a.answer for a in rx.arrivals if a.signal == METRICS]
        assert answers == [fault, fault, "ok"]
        stats = sink.stats()
        assert (stats.retries[METRICS], stats.failed[METRICS]) == (2, 0)
        assert rx.value("sennet.interface.packets", **RX) == 8


def test_close_returns_promptly_while_a_collector_never_answers() -> None:
    """A collector that accepts the connection and then says nothing (a black hole)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        sink = sink_for(options(f"http://127.0.0.1:{hole.getsockname()[1]}", timeout_s=30.0))
        sink.send(snap(1))
        time.sleep(0.3)  # the sender is now waiting for an answer
        started = time.monotonic()
        sink.close()
        took = time.monotonic() - started
        # the call in flight was cut (its socket shut down), so the sender has ended: it is
        # not left blocked in recv until its 30 s deadline
        assert [t for t in threading.enumerate() if t.name == "otlp"] == []
    assert took < 2.0 + 2.5, took  # the flush budget, then the call is cut, not waited out
