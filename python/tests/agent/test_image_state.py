"""The agent reads the booted image and the updater's last outcome from two files.

Real files in a temporary directory, parsed by the agent's own reader; the heartbeat
message and the agent's /metrics (its reference prometheus-client registry) carry them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from sennet.agent.exposition import render
from sennet.agent.image_state import ImageIdentity, ImageState, ImageStateReader, UpdateOutcome
from sennet.agent.readout import SnapshotCollector
from sennet.agent.sinks.heartbeat_message import snapshot_to_request
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.scrape import parse_samples, sample
from sennet.testing.telemetry import full_snapshot

DIGEST = "0123456789abcdef" * 4
ENV = f"SENNET_SLOT=b\nSENNET_IMAGE_VERSION=0.2.0\nSENNET_IMAGE_DIGEST={DIGEST}\n"
STATUS = {
    "booted_slot": "b",
    "active_slot": "b",
    "version": "0.2.0",
    "image_digest": DIGEST,
    "last_outcome": {
        "result": "committed",
        "reason": "",
        "from_version": "0.1.0",
        "to_version": "0.2.0",
        "at": "2026-11-29T06:00:00Z",
    },
}


def test_absent_files_leave_both_fields_unset_without_a_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = ImageStateReader(tmp_path / "image.env", tmp_path / "status.json").read()
    assert state == ImageState(None, None)
    req = snapshot_to_request("a", replace(full_snapshot(), image_state=state), [], 0)
    assert not req.HasField("image") and not req.HasField("last_update")
    assert caplog.records == []


def test_both_files_are_read_into_the_heartbeat(tmp_path: Path) -> None:
    (tmp_path / "image.env").write_text(ENV)
    (tmp_path / "status.json").write_text(json.dumps(STATUS))
    state = ImageStateReader(tmp_path / "image.env", tmp_path / "status.json").read()
    assert state == ImageState(
        ImageIdentity("0.2.0", DIGEST, "b"),
        UpdateOutcome("committed", "", "0.1.0", "0.2.0", 1_795_932_000.0),
    )
    req = snapshot_to_request("a", replace(full_snapshot(), image_state=state), [], 0)
    assert req.image == pb.ImageIdentity(version="0.2.0", digest=DIGEST, slot="b")
    assert req.last_update == pb.UpdateOutcome(
        result="committed", from_version="0.1.0", to_version="0.2.0", at_unix=1_795_932_000.0
    )


def test_a_status_without_an_outcome_yet_and_a_numeric_time(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps({**STATUS, "last_outcome": None}))
    reader = ImageStateReader(tmp_path / "image.env", tmp_path / "status.json")
    assert reader.read().last_update is None
    numeric = {**STATUS["last_outcome"], "at": 1_795_932_000.5}  # type: ignore[dict-item]
    (tmp_path / "status.json").write_text(json.dumps({**STATUS, "last_outcome": numeric}))
    outcome = reader.read().last_update
    assert outcome is not None and outcome.at_unix == 1_795_932_000.5


def test_a_broken_file_is_treated_as_absent_and_logged_once_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    status = tmp_path / "status.json"
    status.write_text('{"last_outcome": {"result": 3}}')
    reader = ImageStateReader(tmp_path / "image.env", status)
    with caplog.at_level(logging.WARNING, logger="sennet.agent.image_state"):
        assert reader.read().last_update is None
        assert reader.read().last_update is None
    said = [getattr(r, "fields", {}) for r in caplog.records]
    assert said == [{"file": status, "error": f"{status}: last_outcome.result: want text"}]


def test_a_symbolic_link_in_place_of_the_file_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(ENV)
    os.symlink(secret, tmp_path / "image.env")
    assert ImageStateReader(tmp_path / "image.env", tmp_path / "s.json").read().image is None


def test_the_agents_own_info_metric_carries_the_image_labels(tmp_path: Path) -> None:
    state = ImageState(ImageIdentity("0.2.0", DIGEST, "b"), None)
    snap = replace(full_snapshot(), image_state=state)
    text = render(SnapshotCollector(lambda: snap, "agent-1").collect()).decode()
    labels = {
        "agent_id": "agent-1",
        "version": "0.1.0",
        "kernel": "6.18.0",
        "loader": "libbpf",
        "image_version": "0.2.0",
        "image_digest": DIGEST,
        "slot": "b",
    }
    assert sample(parse_samples(text), "sennet_agent_info", **labels) == 1.0
