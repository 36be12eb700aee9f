"""The whole chain on this machine: scapy traffic -> TC programs -> agent -> gRPC -> control plane.

The agent runs as the real `sennet-agent run` process in the root namespace
(where the control plane listens on 127.0.0.1, like the appliance's management
NIC) and attaches to `mon0` inside a test-owned namespace with `--netns`, so
heartbeat traffic never crosses the monitored interface and counts are exact.
Both namespaces, the veth pair, the bpffs mount and every process are owned by
fixtures that clean up on any exit.
"""

from __future__ import annotations

import collections
import sqlite3
from pathlib import Path

import pytest

from sennet.common.retry import retry
from sennet.testing.agent import READY, agent
from sennet.testing.controlplane import ControlPlane, create_bootstrap_token, running
from sennet.testing.netlab import VethPair
from sennet.testing.scrape import sample
from tests.frames import LARGE, Case, cases

pytestmark = [pytest.mark.kernel, pytest.mark.integration]

KINDS = (
    "large_packet",
    "tcp_null",
    "tcp_syn_fin",
    "tcp_syn_rst",
    "tcp_xmas",
    "land",
    "ipv4_bad_ihl",
    "ipv4_bad_len",
    "truncated_l3",
    "truncated_l4",
)


def agent_args(
    net: VethPair, pin_root: Path, state: Path, cp: ControlPlane, bootstrap: str
) -> list[str]:
    """The appliance's placement: the agent in the root namespace (where the control plane
    listens on loopback), attached to `mon0` inside the test's namespace with --netns."""
    return [
        "--interfaces", net.if_a,
        "--netns", net.ns_a,
        "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(state),
        "--interval-s", "0.5",
        "--large-packet-bytes", str(LARGE),
        "--control-plane", cp.target,
        "--bootstrap-token", bootstrap,
    ]  # fmt: skip


def expected(batch: list[Case]) -> dict[str, float]:
    kinds = collections.Counter(k for c in batch for k in c.kinds)
    out = {
        "rx_packets": float(len(batch)),
        "rx_bytes": float(sum(c.rx_len for c in batch)),
        "tx_packets": 0.0,
        "tx_bytes": 0.0,
    }
    out.update({k: float(kinds.get(k, 0)) for k in KINDS})
    return out


def observed(cp: ControlPlane, agent_id: str, ifname: str) -> dict[str, float | None]:
    s = cp.samples()
    out: dict[str, float | None] = {}
    for d in ("rx", "tx"):
        out[f"{d}_packets"] = sample(
            s, "sennet_interface_packets_total", agent=agent_id, interface=ifname, direction=d
        )
        out[f"{d}_bytes"] = sample(
            s, "sennet_interface_bytes_total", agent=agent_id, interface=ifname, direction=d
        )
    for k in KINDS:
        out[k] = sample(s, "sennet_events_total", agent=agent_id, kind=k)
    return out


def wait_for_totals(
    cp: ControlPlane, agent_id: str, ifname: str, want: dict[str, float], what: str
) -> None:
    def attempt(last: bool) -> bool | None:
        got = observed(cp, agent_id, ifname)
        if last:
            rejected = {
                k: v
                for k, v in cp.samples().items()
                if k[0] == "sennet_controlplane_requests_rejected_total" and v
            }
            accepted = sample(
                cp.samples(), "sennet_controlplane_heartbeats_accepted_total", transport="grpc"
            )
            assert got == want, f"{what}; rejected {rejected}; accepted {accepted}"
        return True if got == want else None

    retry(attempt, 20.0, interval=0.2, what=what)


def agent_id_of(cp: ControlPlane) -> str:
    def attempt(last: bool) -> str | None:
        ids = {dict(labels)["agent"] for name, labels in cp.samples() if name == "sennet_agent_up"}
        return ids.pop() if len(ids) == 1 else None

    return retry(attempt, 30.0, interval=0.2, what="the agent enrolled")


def test_traffic_on_a_veth_reaches_metrics_exactly_across_agent_and_control_plane_restarts(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    db = tmp_path / "cp.db"
    bootstrap = create_bootstrap_token(db)
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    batch = cases()
    with running(db, tmp_path) as cp:
        args = agent_args(net, pin_root, state, cp, bootstrap)
        with agent("", args, log) as first:
            first.wait_for_log(READY)
            agent_id = agent_id_of(cp)
            wait_for_totals(cp, agent_id, net.if_a, expected([]), "zero counters reported")
            net.send_to_a([c.frame for c in batch])
            wait_for_totals(cp, agent_id, net.if_a, expected(batch), "first batch in /metrics")
            s = cp.samples()
            assert sample(s, "sennet_agent_up", agent=agent_id) == 1
            assert sample(s, "sennet_ringbuf_drops_total", agent=agent_id, kind="large_packet") == 0
            assert sample(s, "sennet_agent_series_resets_total", agent=agent_id) == 0
            assert first.stop() == 0, first.log()  # a graceful stop: final heartbeat, detach

        # The agent restarts: pinned maps keep its counters, its token file its enrolment.
        with agent("", args, log) as second:
            second.wait_for_log(READY, count=2)  # the log file holds both starts
            net.send_to_a([c.frame for c in batch])
            wait_for_totals(
                cp,
                agent_id,
                net.if_a,
                expected(batch + batch),
                "counters continue after an agent restart",
            )

            # The control plane restarts while the agent keeps counting.
            assert cp.stop() == 0
            net.send_to_a([c.frame for c in batch])
            cp.start(cp.grpc_port, cp.http_port)
            wait_for_totals(
                cp,
                agent_id,
                net.if_a,
                expected(batch * 3),
                "the agent reconnects and nothing is lost",
            )
            s = cp.samples()
            assert sample(s, "sennet_agent_series_resets_total", agent=agent_id) == 0
            assert (
                sample(
                    s,
                    "sennet_controlplane_requests_rejected_total",
                    method="Heartbeat",
                    code="unauthenticated",
                    reason="revoked_token",
                )
                == 0
            )
            assert second.stop() == 0, second.log()
        assert sample(cp.samples(), "sennet_agent_events_dropped_total", agent=agent_id) == 0
        assert cp.stop() == 0

    # Every event the kernel reported arrived as a stored event record, kind by kind.
    with sqlite3.connect(db) as conn:
        stored = dict(
            conn.execute(
                "SELECT kind, count(*) FROM events WHERE agent_id = ? GROUP BY kind", (agent_id,)
            )
        )
        enrolments = conn.execute(
            "SELECT count(*) FROM tokens WHERE kind = 'agent' AND agent_id = ?", (agent_id,)
        ).fetchone()[0]
    want_events = {k: int(v) * 3 for k, v in expected(batch).items() if k in KINDS and v}
    assert stored == want_events
    assert enrolments == 1  # enrolled once; the restarted agent reused its token
