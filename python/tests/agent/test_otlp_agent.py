"""The real `sennet-agent run` exporting over OTLP to a real receiver, beside a real control plane.

The agent runs in the root namespace (where the receiver and the control plane listen on
loopback) and attaches to `mon0` in a test-owned namespace with --netns, so its own export
traffic never crosses the monitored interface. Oracles: the kernel's interface counters
(IFLA_STATS64, what `ip -s link` prints), the control plane's /metrics for the same
agent, and the scapy frames' own fields for the event records.
"""

from __future__ import annotations

import collections
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.logs.v1 import logs_pb2

from sennet.common.retry import retry
from sennet.testing.agent import READY, agent, run_cli
from sennet.testing.controlplane import create_bootstrap_token, running
from sennet.testing.linkstats import LinkStats, link_stats, settled
from sennet.testing.netlab import VethPair
from sennet.testing.otlp_receiver import OtlpReceiver, attributes
from sennet.testing.ports import free_port
from sennet.testing.scrape import sample, scrape
from sennet.testing.vm.traffic import hostile
from tests.frames import LARGE, cases

pytestmark = [pytest.mark.kernel, pytest.mark.integration]


def base_args(net: VethPair, pin_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--interfaces", net.if_a, "--netns", net.ns_a,
        "--pin-dir", str(pin_root / "sennet"), "--state-dir", str(tmp_path / "state"),
        "--interval-s", "0.5", "--large-packet-bytes", str(LARGE), *extra,
    ]  # fmt: skip


def otlp_counts(rx: OtlpReceiver, ifname: str) -> LinkStats | None:
    values = []
    for direction in ("receive", "transmit"):
        for what in ("packets", "bytes"):
            attrs = {"network.interface.name": ifname, "network.io.direction": direction}
            values.append(rx.value(f"sennet.interface.{what}", **attrs))
    if None in values:
        return None
    return LinkStats(*values)


def wait_for_counts(rx: OtlpReceiver, ifname: str, want: LinkStats) -> None:
    def attempt(last: bool) -> bool | None:
        got = otlp_counts(rx, ifname)
        assert not last or got == want, f"OTLP has {got}, the kernel counted {want}"
        return True if got == want else None

    retry(attempt, 20.0, interval=0.2, what="OTLP totals equal to the kernel's")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_agent_exports_the_kernels_counts_and_the_control_plane_gets_the_same(
    net: VethPair, pin_root: Path, tmp_path: Path, protocol: str
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    secret = "Bearer otlp-t0ken-not-for-logs"
    port = free_port()
    with running(db, tmp_path) as cp, OtlpReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        args = base_args(
            net, pin_root, tmp_path,
            "--control-plane", cp.target, "--bootstrap-token", bootstrap,
            "--otlp-endpoints", endpoint, "--otlp-headers", f"authorization={secret}",
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        with agent("", args, tmp_path / "agent.log") as a:
            a.wait_for_log(READY)
            assert link_stats(net.ns_a, net.if_a) == LinkStats(0, 0, 0, 0)  # IPv6 is off
            frames = [c.frame for c in cases()]
            net.send_to_a(frames)
            net.send_from_a(frames[:5])
            kernel = settled(net.ns_a, net.if_a)
            assert (kernel.rx_packets, kernel.tx_packets) == (len(frames), 5)
            wait_for_counts(rx, net.if_a, kernel)
            resource = attributes(
                rx.accepted("metrics")[-1].request.resource_metrics[0].resource.attributes  # type: ignore[union-attr]
            )
            agent_id = resource["host.id"]
            # Cumulative series start when the pinned counters were created (the pin's inode).
            pinned = (pin_root / "sennet" / "COUNTERS").stat().st_ctime_ns
            starts = {
                p.start_time_unix_nano for p in rx.latest_points("sennet.interface.bytes").values()
            }
            assert starts == {pinned}

            def control_plane_counts(last: bool) -> LinkStats | None:
                s = cp.samples()
                got = LinkStats(*[
                    int(sample(s, f"sennet_interface_{w}_total", agent=agent_id,
                               interface=net.if_a, direction=d) or -1)
                    for d in ("rx", "tx") for w in ("packets", "bytes")
                ])  # fmt: skip
                return got if got == kernel or last else None

            assert retry(control_plane_counts, 20.0, 0.2, "control plane totals") == kernel
            m = scrape(f"http://127.0.0.1:{port}/metrics")  # both sinks behind the fan-out
            assert (sample(m, "sennet_agent_otlp_exported_total", signal="metrics") or 0) > 0
            for counter in ("rejected", "failed", "dropped"):
                assert sample(m, f"sennet_agent_otlp_{counter}_total", signal="logs") == 0
            assert sample(m, "sennet_agent_otlp_endpoint_active", endpoint=endpoint) == 1
            assert a.stop() == 0, a.log()
        assert cp.stop() == 0, cp.log()
    assert {x.headers.get("authorization") for x in rx.arrivals} == {secret}
    assert secret not in a.log() and "otlp-t0ken" not in a.log()
    bodies = collections.Counter(r.body.string_value for r in rx.log_records())
    assert bodies["agent.started"] == 1 and bodies["agent.attached"] == 1
    assert bodies["agent.enrolled"] == 1 and bodies["agent.stopping"] == 1
    sent = cases() + cases()[:5]  # received, then the first five sent out of mon0 too
    kinds = collections.Counter(k for c in sent for k in c.kinds)
    assert {k: bodies[k] for k in kinds} == dict(kinds)


def test_after_an_outage_totals_and_every_event_arrive_with_a_bounded_queue_and_backoff(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    limit = 65536  # a few metrics exports (each ~10 KB with DNS and TCP health) and the events
    port = free_port()
    with OtlpReceiver() as rx:
        rx.stop()  # down from the start: several intervals pass before it comes up
        args = base_args(
            net, pin_root, tmp_path,
            "--otlp-endpoints", rx.grpc_endpoint, "--otlp-queue-bytes", str(limit),
            "--metrics-listen", f"127.0.0.1:{port}", "--large-packet-bytes", "1514",
        )  # fmt: skip
        expected = hostile()
        with agent("", args, tmp_path / "agent.log") as a:
            a.wait_for_log(READY)
            net.send_to_a([c.frame for c in expected])
            kernel = settled(net.ns_a, net.if_a)
            a.wait_for_log("event=otlp_export_failed", count=4)
            a.wait_for_log("event=otlp_queue_full")
            m = scrape(f"http://127.0.0.1:{port}/metrics")
            assert sample(m, "sennet_agent_otlp_retries_total", signal="metrics")
            assert sample(m, "sennet_agent_otlp_dropped_total", signal="metrics")
            queued = sample(m, "sennet_agent_otlp_queue_size")
            assert queued is not None and queued <= limit
            assert sample(m, "sennet_agent_otlp_queue_capacity") == limit
            rx.start()
            wait_for_counts(rx, net.if_a, kernel)
            rx.wait_until("event records", lambda: len(events_of(rx)) >= len(expected))
            m = scrape(f"http://127.0.0.1:{port}/metrics")
            assert sample(m, "sennet_agent_otlp_dropped_total", signal="logs") == 0
            assert a.stop() == 0, a.log()
    assert "retry_in_s=" in a.log()
    got = sorted(
        (
            r.body.string_value,
            attrs.get("source.address", ""),
            attrs.get("destination.address", ""),
            attrs["source.port"],
            attrs["destination.port"],
            attrs["sennet.packet.length"],
            attrs["network.io.direction"],
            attrs["network.interface.name"],
            r.severity_text,
        )
        for r, attrs in events_of(rx)
    )
    want = sorted(
        (c.kind, c.src, c.dst, c.sport, c.dport, len(c.frame), "receive", net.if_a,
         "INFO" if c.kind == "large_packet" else "WARN")
        for c in expected
    )  # fmt: skip
    assert got == want


def events_of(rx: OtlpReceiver) -> list[tuple[logs_pb2.LogRecord, dict[str, Any]]]:
    """The ring-buffer events among the log records, with their attributes."""
    return [
        (r, attributes(r.attributes))
        for r in rx.log_records()
        if r.event_name.startswith("sennet.event.")
    ]


def test_a_restarted_agent_continues_the_same_series_and_a_reset_starts_new_ones(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    frames = [c.frame for c in cases()]
    seen: list[tuple[int, int]] = []  # (start time, rx packets) per agent run
    with OtlpReceiver() as rx:
        args = base_args(net, pin_root, tmp_path, "--otlp-endpoints", rx.http_endpoint)
        for run in range(3):
            if run == 2:
                result = run_cli("", ["reset", "--pin-dir", str(pin_root / "sennet")])
                assert result.returncode == 0, result.stderr
            with agent("", args, tmp_path / "agent.log") as a:
                a.wait_for_log(READY, count=run + 1)
                net.send_to_a(frames)
                total = settled(net.ns_a, net.if_a).rx_packets
                want = total if run < 2 else len(frames)  # after the reset: this run's only
                rx.wait_until("this run's totals", partial(has_rx_packets, rx, net.if_a, want))
                (point,) = [p for k, p in rx.latest_points("sennet.interface.packets").items()
                            if ("network.io.direction", "receive") in k]  # fmt: skip
                seen.append((point.start_time_unix_nano, point.as_int))
                assert a.stop() == 0, a.log()
    assert [n for _, n in seen] == [len(frames), 2 * len(frames), len(frames)]
    assert seen[0][0] == seen[1][0]  # one series across the restart
    assert seen[2][0] > seen[1][0]  # the maps were recreated: a new series


def has_rx_packets(rx: OtlpReceiver, ifname: str, want: int) -> bool:
    attrs = {"network.interface.name": ifname, "network.io.direction": "receive"}
    return bool(rx.value("sennet.interface.packets", **attrs) == want)
