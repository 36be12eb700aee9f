"""An agent built before flows, DNS and TCP health still reports, over gRPC and Connect.

The old agent's message is compiled at test time from a frozen copy of the
schema it was built with (`data/sentinel_before_flows.proto`) into a private
descriptor pool, so its bytes come from the old definition, not from today's
classes with fields left empty.
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
from sennet.testing.controlplane import Served
from sennet.testing.scrape import sample

OLD_PROTO = Path(__file__).parent / "data" / "sentinel_before_flows.proto"
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


@pytest.fixture(scope="module")
def old_heartbeat(tmp_path_factory: pytest.TempPathFactory) -> type[Message]:
    """HeartbeatRequest as the old schema defines it, in a descriptor pool of its own."""
    root = tmp_path_factory.mktemp("oldproto")
    (root / "sentinel/v1").mkdir(parents=True)
    shutil.copy(OLD_PROTO, root / "sentinel/v1/sentinel.proto")
    out = root / "old.pb"
    args = ["protoc", f"-I{root}", f"--descriptor_set_out={out}", "sentinel/v1/sentinel.proto"]
    assert protoc.main(args) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    desc = pool.FindMessageTypeByName("sentinel.v1.HeartbeatRequest")
    assert [f.number for f in desc.fields] == list(range(1, 11))  # truly the old message
    cls: type[Message] = message_factory.GetMessageClass(desc)
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
    if transport == "grpc":
        code, details, out = cp.call_raw(HEARTBEAT.name, body, token)
        assert (code, details) == (grpc.StatusCode.OK, "")
    else:
        status, out = cp.connect_proto(HEARTBEAT.name, body, token)
        assert status == 200, out
    assert HEARTBEAT.response.FromString(out).server_time_unix_ns > 0
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
