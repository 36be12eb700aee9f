"""Failover under traffic: a real agent, two control-plane replicas on one database, kill -9.

The agent runs as `sennet-agent run` in the root namespace, attached to `mon0` in a
test-owned namespace (`--netns`), with `--control-plane A,B`. A thread sends known
frames across the veth in both directions the whole time. Replica A is killed with
SIGKILL, later restarted on its ports. Oracles none of our code computes: the
kernel's own interface counters (IFLA_STATS64, `ip -s link`), the frames the test
sent, the rows in the shared SQLite file, each replica's /metrics scraped
throughout, and the agent's own log of what was acknowledged.
"""

from __future__ import annotations

import calendar
import contextlib
import itertools
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import UDP

from sennet.common.retry import retry
from sennet.testing.agent import READY, agent
from sennet.testing.controlplane import ControlPlane, create_bootstrap_token, running
from sennet.testing.errors import HarnessError
from sennet.testing.linkstats import LinkStats, settled
from sennet.testing.netlab import VethPair
from sennet.testing.ports import free_port
from sennet.testing.scrape import Samples, sample, scrape
from tests.frames import eth, ip4, padded

pytestmark = [pytest.mark.kernel, pytest.mark.integration]

INTERVAL_S = 1.0
FAILBACK_S = 5.0
RX_FRAME = padded(eth() / ip4() / UDP(sport=4000, dport=5000))  # 60 bytes
TX_FRAME = padded(eth() / ip4() / UDP(sport=5000, dport=4000) / (b"x" * 300))
COUNTERS = ("sennet_interface_packets_total", "sennet_interface_bytes_total")


@dataclass
class Traffic:
    """Frames sent across the veth from a thread until stopped; the test's own tally."""

    net: VethPair
    rx: int = 0
    tx: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.net.send_to_a([RX_FRAME] * 4)
            self.rx += 4
            self.net.send_from_a([TX_FRAME])
            self.tx += 1


@dataclass
class Scrapes:
    """Every replica's agent counters, scraped every 0.2 s: (replica, time, series -> value)."""

    replicas: list[ControlPlane]
    agent_id: str
    seen: list[tuple[str, float, dict[tuple[str, str, str], float]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for cp in self.replicas:
                try:
                    samples = scrape(cp.http + "/metrics", timeout=2)
                except OSError:
                    continue  # this replica is down right now
                self.seen.append((cp.name, time.time(), counters(samples, self.agent_id)))


def counters(samples: Samples, agent_id: str) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name in COUNTERS and lab.get("agent") == agent_id:
            out[(name, lab["interface"], lab["direction"])] = value
    return out


@contextlib.contextmanager
def running_thread(target: Traffic | Scrapes) -> Iterator[None]:
    thread = threading.Thread(target=target.run, name=type(target).__name__, daemon=True)
    thread.start()
    try:
        yield
    finally:
        target.stop.set()
        thread.join(10)
        if thread.is_alive():
            raise HarnessError(f"{thread.name} thread did not stop")


def agent_args(
    net: VethPair, pin_root: Path, state: Path, replicas: list[ControlPlane], bootstrap: str
) -> list[str]:
    return [
        "--interfaces", net.if_a,
        "--netns", net.ns_a,
        "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(state),
        "--interval-s", str(INTERVAL_S),
        "--control-plane", ",".join(cp.target for cp in replicas),
        "--control-plane-failback-s", str(FAILBACK_S),
        "--bootstrap-token", bootstrap,
        "--log-level", "debug",
    ]  # fmt: skip


def agent_id_of(cp: ControlPlane) -> str:
    def attempt(last: bool) -> str | None:
        ids = {dict(labels)["agent"] for name, labels in cp.samples() if name == "sennet_agent_up"}
        return ids.pop() if len(ids) == 1 else None

    return retry(attempt, 30.0, interval=0.2, what="the agent enrolled")


def stored_times(cp: ControlPlane, agent_id: str) -> list[float]:
    rows = cp.query(
        "SELECT received_at FROM heartbeats WHERE agent_id = ? ORDER BY received_at", agent_id
    )
    return [float(r[0]) for r in rows]


def acked(log: str) -> list[tuple[str, float]]:
    """(address, uptime) of every heartbeat the agent logged as acknowledged."""
    found = re.findall(r"event=heartbeat_acked control_plane=(\S+) uptime_s=(\S+)", log)
    return [(address, float(uptime)) for address, uptime in found]


def logged_at(log: str, name: str) -> float:
    """The wall-clock time of the one `name` event in the agent's log."""
    (stamp,) = re.findall(rf"^ts=(\S+)Z level=\w+ logger=\S+ event={name} ", log, re.M)
    whole, _, ms = stamp.partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000


def as_link_stats(s: dict[tuple[str, str, str], float], ifname: str) -> LinkStats:
    """A control plane's series for one interface in the shape of the kernel's counters."""

    def get(name: str, direction: str) -> int:
        return int(s.get((f"sennet_interface_{name}_total", ifname, direction), -1))

    return LinkStats(
        get("packets", "rx"), get("bytes", "rx"), get("packets", "tx"), get("bytes", "tx")
    )


def test_killing_the_active_replica_under_traffic_loses_nothing_and_the_agent_returns_later(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    log_path = tmp_path / "agent.log"
    metrics = f"127.0.0.1:{free_port()}"
    refresh = ["--fleet-refresh", "0.2"]  # each replica renders from the shared database
    with (
        running(db, tmp_path, refresh, name="cp-a") as a,
        running(db, tmp_path, refresh, name="cp-b") as b,
    ):
        args = [*agent_args(net, pin_root, tmp_path / "state", [a, b], bootstrap)]
        args += ["--metrics-listen", metrics]
        traffic = Traffic(net)
        with agent("", args, log_path) as proc, contextlib.ExitStack() as stack:
            proc.wait_for_log(READY)
            # What crossed before the hooks were attached (nothing, on a quiet link).
            attached = settled(net.ns_a, net.if_a)
            stack.enter_context(running_thread(traffic))
            agent_id = agent_id_of(a)
            scrapes = Scrapes([a, b], agent_id)
            with running_thread(scrapes):
                a.wait_until("3 heartbeats", lambda: len(stored_times(a, agent_id)) >= 3)
                pre = {cp.name: counters(cp.samples(), agent_id) for cp in (a, b)}
                killed_at = time.time()
                assert a.stop(signal.SIGKILL) == -signal.SIGKILL
                b.wait_until(
                    "3 heartbeats after the kill",
                    lambda: len([t for t in stored_times(b, agent_id) if t > killed_at]) >= 3,
                )
                proc.wait_for_log("event=control_plane_failover")
                post = counters(b.samples(), agent_id)
                local = scrape(f"http://{metrics}/metrics")
                assert sample(local, "sennet_agent_control_plane_info", address=b.target) == 1
                assert sample(local, "sennet_agent_control_plane_failovers_total") == 1

                a.start()  # same ports, same database
                restarted_at = time.monotonic()
                proc.wait_for_log("event=control_plane_failback", timeout=2 * FAILBACK_S + 10)
                back_after = time.monotonic() - restarted_at
                at_a = f"event=heartbeat_acked control_plane={a.target}"
                proc.wait_for_log(at_a, count=proc.log().count(at_a) + 2)
                local = scrape(f"http://{metrics}/metrics")
                assert sample(local, "sennet_agent_control_plane_info", address=a.target) == 1
                assert sample(local, "sennet_agent_control_plane_failovers_total") == 1
                assert sample(local, "sennet_agent_control_plane_failbacks_total") == 1

            stack.close()  # the traffic stops
            kernel = settled(net.ns_a, net.if_a, quiet=0.3) - attached

            def final(last: bool) -> bool | None:
                got = as_link_stats(counters(a.samples(), agent_id), net.if_a)
                if last:
                    assert got == kernel, "A's /metrics against the kernel's counters"
                return True if got == kernel else None

            retry(final, 15, interval=0.2, what="A renders the kernel's final counters")
            b.wait_until(
                "B renders them too, from the shared database",
                lambda: as_link_stats(counters(b.samples(), agent_id), net.if_a) == kernel,
                timeout=10,
            )
            assert proc.stop() == 0, proc.log()
        log = log_path.read_text()

    # The kernel counted exactly the frames sent, and so did Sennet, through both replicas.
    assert attached == LinkStats(0, 0, 0, 0)
    assert kernel == LinkStats(
        traffic.rx, traffic.rx * len(RX_FRAME), traffic.tx, traffic.tx * len(TX_FRAME)
    )
    print(f"frames rx={traffic.rx} tx={traffic.tx}; kernel {kernel}")

    # The stored cumulative readings never went back, and the stored totals are the kernel's.
    readings = a.query(
        "SELECT s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes FROM interface_samples s"
        " JOIN heartbeats h USING (heartbeat_id) WHERE h.agent_id = ? ORDER BY heartbeat_id",
        agent_id,
    )
    for earlier, later in itertools.pairwise(readings):
        assert all(e <= f for e, f in zip(earlier, later, strict=True)), (earlier, later)
    assert LinkStats(*readings[-1]) == kernel
    totals = dict(a.query("SELECT key, total FROM series WHERE agent_id = ?", agent_id))
    assert (
        LinkStats(
            totals[f"rx_packets:{net.if_a}"],
            totals[f"rx_bytes:{net.if_a}"],
            totals[f"tx_packets:{net.if_a}"],
            totals[f"tx_bytes:{net.if_a}"],
        )
        == kernel
    )

    # Heartbeats kept arriving: the first after the kill came through B within one interval.
    times = stored_times(a, agent_id)
    first_after = min(t for t in times if t > killed_at)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    print(
        f"first heartbeat after the kill {first_after - killed_at:.3f} s; max gap {max(gaps):.3f} s"
    )
    assert first_after - killed_at <= INTERVAL_S
    assert max(gaps) <= INTERVAL_S + 0.5

    # No acknowledged heartbeat lost: each one the agent logged as acknowledged is stored.
    acks = acked(log)
    uptimes = {
        float(u)
        for (u,) in a.query("SELECT uptime_seconds FROM heartbeats WHERE agent_id = ?", agent_id)
    }
    assert {address for address, _ in acks} == {a.target, b.target}
    assert [u for _, u in acks if u not in uptimes] == []
    assert len(acks) <= len(times)  # a reply lost in the kill may store one twice, no more
    by_address = {cp.name: sum(1 for addr, _ in acks if addr == cp.target) for cp in (a, b)}
    print(f"acknowledged {by_address}; stored {len(times)} heartbeats")

    # Enrolled once; failed over once, back once; the series never reset.
    assert (
        a.scalar("SELECT count(*) FROM tokens WHERE kind = 'agent' AND agent_id = ?", agent_id) == 1
    )
    assert a.scalar("SELECT resets FROM agents WHERE agent_id = ?", agent_id) == 0
    assert log.count("event=control_plane_failover") == 1
    assert log.count("event=control_plane_failback") == 1
    # It stayed on B at least the failback time, and came back at the first or second probe
    # after A returned (a probe can meet the old channel still waiting to reconnect).
    away = logged_at(log, "control_plane_failback") - logged_at(log, "control_plane_failover")
    print(f"on B for {away:.3f} s; back {back_after:.3f} s after A restarted")
    assert away >= FAILBACK_S
    assert back_after <= 2 * FAILBACK_S + INTERVAL_S

    # Prometheus: no counter of this agent ever went down. Each replica is its own scrape
    # target, so each one's series must be monotonic over the whole run (A's across its
    # restart too); and what B showed after the switch is at least what either showed before.
    for replica in ("cp-a", "cp-b"):
        last: dict[tuple[str, str, str], float] = {}
        seen = [values for name, _, values in scrapes.seen if name == replica]
        assert len(seen) >= 10, replica
        for values in seen:
            for key, value in values.items():
                assert value >= last.get(key, 0), (replica, key, value, last.get(key))
                last[key] = value
    for key in post:
        assert post[key] >= max(pre["cp-a"][key], pre["cp-b"].get(key, 0)), key
    restarted = [t for name, t, _ in scrapes.seen if name == "cp-a" and t > killed_at]
    assert restarted, "A was scraped after its restart"
