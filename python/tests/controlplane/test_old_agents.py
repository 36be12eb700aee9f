"""Agents built before a schema change still report, over gRPC and Connect.

Two old agents: one built before flows, DNS and TCP health, one built before
FlowSummary's `evicted_total`. Each old agent's message is compiled at test time
from a frozen copy of the schema it was built with (`data/sentinel_before_*.proto`)
into a private descriptor pool, so its bytes come from the old definition, not
from today's classes with fields left empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_tools import protoc

from sennet.proto.contract import HEARTBEAT
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.controlplane import ControlPlane, Served
from sennet.testing.scrape import sample

DATA = Path(__file__).parent / "data"
OLD_PROTO = DATA / "sentinel_before_flows.proto"
BEFORE_EVICTED_PROTO = DATA / "sentinel_before_evicted.proto"
NEW_TABLES = (
    "flow_samples",
    "talkers",
    "microbursts",
    "dns_samples",
    "dns_counts",
    "dns_names",
    "tcp_samples",
    "histogram_samples",
)


def _compile_heartbeat(proto: Path, root: Path) -> type[Message]:
    """HeartbeatRequest as the frozen schema `proto` defines it, in a descriptor pool of its own."""
    (root / "sentinel/v1").mkdir(parents=True)
    shutil.copy(proto, root / "sentinel/v1/sentinel.proto")
    out = root / "old.pb"
    args = ["protoc", f"-I{root}", f"--descriptor_set_out={out}", "sentinel/v1/sentinel.proto"]
    assert protoc.main(args) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    desc = pool.FindMessageTypeByName("sentinel.v1.HeartbeatRequest")
    cls: type[Message] = message_factory.GetMessageClass(desc)
    return cls


@pytest.fixture(scope="module")
def old_heartbeat(tmp_path_factory: pytest.TempPathFactory) -> type[Message]:
    """HeartbeatRequest as an agent built before flows, DNS and TCP health defines it."""
    cls = _compile_heartbeat(OLD_PROTO, tmp_path_factory.mktemp("oldproto"))
    fields = cls.DESCRIPTOR.fields
    assert [f.number for f in fields] == list(range(1, 11))  # truly the old message
    return cls


@pytest.fixture(scope="module")
def before_evicted(tmp_path_factory: pytest.TempPathFactory) -> type[Message]:
    """HeartbeatRequest as an agent built before FlowSummary's evicted_total defines it."""
    cls = _compile_heartbeat(BEFORE_EVICTED_PROTO, tmp_path_factory.mktemp("beforeevicted"))
    flows = cls.DESCRIPTOR.fields_by_name["flows"].message_type
    assert flows is not None
    assert [f.number for f in flows.fields] == list(range(1, 7))  # truly without field 7
    return cls


def _old_request(cls: type[Message], agent_id: str) -> bytes:
    """The serialized heartbeat of an old agent with known counters."""
    msg: Any = cls(
        agent_id=agent_id, agent_version="0.0.9", kernel_version="6.1.0", uptime_seconds=7.0
    )
    itf = msg.interfaces.add()
    itf.name, itf.ifindex = "eth1", 3
    itf.rx_packets, itf.rx_bytes, itf.tx_packets, itf.tx_bytes = 5, 300, 2, 140
    msg.events_by_kind["large_packet"] = 4
    body: bytes = msg.SerializeToString()
    return body


def _send(cp: ControlPlane, transport: str, body: bytes, token: str) -> None:
    """One raw heartbeat over `transport`, which must be accepted."""
    if transport == "grpc":
        code, details, out = cp.call_raw(HEARTBEAT.name, body, token)
        assert (code, details) == (grpc.StatusCode.OK, "")
    else:
        status, out = cp.connect_proto(HEARTBEAT.name, body, token)
        assert status == 200, out
    assert HEARTBEAT.response.FromString(out).server_time_unix_ns > 0


@pytest.mark.parametrize("transport", ["grpc", "connect"])
def test_an_old_agents_heartbeat_is_accepted_and_stored(
    shared: Served, old_heartbeat: type[Message], transport: str
) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    body = _old_request(old_heartbeat, agent_id)
    # today's schema reads the old bytes with every new field absent
    decoded = pb.HeartbeatRequest.FromString(body)
    assert not any(decoded.HasField(f) for f in ("flows", "dns", "tcp"))
    _send(cp, transport, body, token)
    rows = cp.query(
        "SELECT h.agent_version, h.uptime_seconds, s.ifname, s.ifindex, s.rx_packets, s.rx_bytes,"
        " s.tx_packets, s.tx_bytes FROM heartbeats h JOIN interface_samples s USING"
        " (heartbeat_id) WHERE h.agent_id = ?",
        agent_id,
    )
    assert rows == [("0.0.9", 7.0, "eth1", 3, 5, 300, 2, 140)]
    for table in NEW_TABLES:
        n = cp.scalar(
            f"SELECT count(*) FROM {table} JOIN heartbeats USING (heartbeat_id) WHERE agent_id = ?",
            agent_id,
        )
        assert n == 0, table
    s = cp.samples()
    labels = {"agent": agent_id, "interface": "eth1"}
    assert sample(s, "sennet_interface_bytes_total", direction="rx", **labels) == 300
    assert sample(s, "sennet_interface_packets_total", direction="tx", **labels) == 2
    assert sample(s, "sennet_events_total", agent=agent_id, kind="large_packet") == 4
    assert not [
        k
        for k in s
        if k[0].startswith(("sennet_flow_", "sennet_dns_", "sennet_tcp_"))
        and ("agent", agent_id) in k[1]
    ]


@pytest.mark.parametrize("transport", ["grpc", "connect"])
def test_an_agent_built_before_evicted_total_reports_its_flows_with_evicted_at_zero(
    shared: Served, before_evicted: type[Message], transport: str
) -> None:
    cp = shared.cp
    agent_id, token = cp.register(shared.bootstrap)
    msg: Any = before_evicted(agent_id=agent_id, agent_version="0.1.0", uptime_seconds=9.0)
    f = msg.flows
    f.active, f.created_total, f.ended_total, f.lost_total, f.capacity = 12, 500, 471, 17, 4096
    body: bytes = msg.SerializeToString()
    # today's schema reads the old bytes with the new field absent
    decoded = pb.HeartbeatRequest.FromString(body)
    assert (decoded.flows.lost_total, decoded.flows.evicted_total) == (17, 0)
    _send(cp, transport, body, token)
    rows = cp.query(
        "SELECT active, capacity, created_total, ended_total, lost_total, evicted_total"
        " FROM flow_samples JOIN heartbeats USING (heartbeat_id) WHERE agent_id = ?",
        agent_id,
    )
    assert rows == [(12, 4096, 500, 471, 17, 0)]
    s = cp.samples()
    assert sample(s, "sennet_flow_created_total", agent=agent_id) == 500
    assert sample(s, "sennet_flow_ended_total", agent=agent_id) == 471
    assert sample(s, "sennet_flow_lost_total", agent=agent_id) == 17
    assert sample(s, "sennet_flow_evicted_total", agent=agent_id) == 0
