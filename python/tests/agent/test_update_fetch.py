"""The agent fetches an offered bundle for the updater: bounded, resumable, verified.

Against a real control-plane process (its HTTP listener serves the bundle with Range),
with a real TCP proxy that cuts the connection to break a transfer for real. The agent's
heartbeat sink is exercised too: the offer arrives in a real gRPC answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from sennet.agent.image_state import ImageIdentity, ImageState
from sennet.agent.sinks.controlplane_grpc import GrpcSink, SinkOptions
from sennet.agent.update_fetch import FetchOptions, FetchRefused, UpdateFetcher
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.bundles import make_bundle
from sennet.testing.controlplane import ControlPlane, Served, cli
from sennet.testing.cutproxy import cut_proxy
from sennet.testing.telemetry import full_snapshot

CHUNK = 64 << 10


def published(
    cp: ControlPlane, tmp: Path, version: str = "0.2.0", size: int = 500_000
) -> pb.UpdateOffer:
    bundle = tmp / f"{version}.bundle"
    sha = make_bundle(bundle, version, payload_bytes=size)
    result = cli(cp.db, "update", "publish", str(bundle), "--apply-at", "now")
    assert result.returncode == 0, result.stderr
    return pb.UpdateOffer(
        version=version,
        sha256=sha,
        size=bundle.stat().st_size,
        download_path=f"/updates/{sha}.bundle",
        download_port=cp.http_port,
        apply_at="now",
    )


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    """The key=value fields of every `name` event logged (sennet.common.log.event)."""
    return [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == name]


def fetcher(agent_dir: Path, max_bytes: int = 1 << 30) -> UpdateFetcher:
    return UpdateFetcher(agent_dir, FetchOptions(max_bytes=max_bytes, chunk_bytes=CHUNK))


def test_a_bundle_is_fetched_in_pieces_verified_and_handed_over_with_its_request(
    fresh: Served, tmp_path: Path
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path)
    _aid, token = cp.register(fresh.bootstrap)
    f = fetcher(tmp_path / "agent")
    bundle = f.fetch(offer, cp.http, token)
    source = (tmp_path / "0.2.0.bundle").read_bytes()
    assert bundle == tmp_path / "agent" / "updates" / f"{offer.sha256}.bundle"
    assert bundle.read_bytes() == source
    request = json.loads((bundle.parent / f"{offer.sha256}.request.json").read_text())
    assert request == {"apply_at": "now", "size": offer.size, "version": "0.2.0"}
    assert sorted(p.name for p in bundle.parent.iterdir()) == [
        f"{offer.sha256}.bundle",
        f"{offer.sha256}.request.json",
    ]
    assert f.stats().bytes_fetched == offer.size
    # the updater takes both away; the offer keeps coming until the new version runs, and
    # this agent process does not fetch what it handed over again
    for p in bundle.parent.iterdir():
        p.unlink()
    f.offered(offer, f"127.0.0.1:{cp.grpc_port}", token)
    assert f.wait(10)
    assert (list(bundle.parent.iterdir()), f.stats().bytes_fetched) == ([], offer.size)


def test_a_cut_connection_is_resumed_from_the_partial_file(
    fresh: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path, size=600_000)
    _aid, token = cp.register(fresh.bootstrap)
    f = fetcher(tmp_path / "agent")
    part = tmp_path / "agent" / "updates" / f"{offer.sha256}.part"
    with cut_proxy(cp.http_port, cut_after=250_000) as proxy:
        with pytest.raises(OSError):  # the link broke mid-transfer (IncompleteRead is one)
            f.fetch(offer, f"http://127.0.0.1:{proxy.port}", token)
        have = part.stat().st_size
        # only whole pieces are kept: three 64 KiB pieces got through before the cut
        assert have == 3 * CHUNK
        caplog.set_level(logging.INFO, logger="sennet.agent.update_fetch")
        bundle = f.fetch(offer, f"http://127.0.0.1:{proxy.port}", token)
        assert proxy.connections == 2
        served_twice = proxy.sent - offer.size
    assert bundle.read_bytes() == (tmp_path / "0.2.0.bundle").read_bytes()
    assert not part.exists()
    assert logged(caplog, "update_fetch_resumed") == [{"version": "0.2.0", "have": have}]
    # what crossed the link twice is the piece in flight when it broke, plus HTTP heads
    assert 0 < served_twice < CHUNK + 4096, served_twice


def test_a_restarted_control_plane_mid_download_is_resumed_after_it_returns(
    fresh: Served, tmp_path: Path
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path, size=400_000)
    _aid, token = cp.register(fresh.bootstrap)
    f = fetcher(tmp_path / "agent")
    part = tmp_path / "agent" / "updates" / f"{offer.sha256}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((tmp_path / "0.2.0.bundle").read_bytes()[: 2 * CHUNK])  # an earlier run
    cp.stop()
    with pytest.raises(OSError):
        f.fetch(offer, cp.http, token)
    assert part.stat().st_size == 2 * CHUNK  # nothing lost while the server was away
    cp.start()
    bundle = f.fetch(offer, cp.http, token)
    assert bundle.read_bytes() == (tmp_path / "0.2.0.bundle").read_bytes()
    assert f.stats().bytes_fetched == offer.size - 2 * CHUNK


def test_a_bundle_whose_sha256_differs_from_the_offer_is_refused_and_discarded(
    fresh: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path)
    stored = cp.db.parent / "bundles" / f"{offer.sha256}.bundle"
    data = bytearray(stored.read_bytes())
    data[-1000] ^= 0xFF  # corrupted on the server's disk: same size, other bytes
    stored.write_bytes(bytes(data))
    _aid, token = cp.register(fresh.bootstrap)
    f = fetcher(tmp_path / "agent")
    with pytest.raises(FetchRefused) as refused:
        f.fetch(offer, cp.http, token)
    assert refused.value.reason == "sha256_mismatch"
    assert list((tmp_path / "agent" / "updates").iterdir()) == []
    # through the offer path: one log line naming why, and not fetched again by this process
    f.offered(offer, f"127.0.0.1:{cp.grpc_port}", token)
    assert f.wait(30)
    f.offered(offer, f"127.0.0.1:{cp.grpc_port}", token)
    assert f.wait(30)
    (refusal,) = logged(caplog, "update_offer_refused")  # once, though offered twice
    assert refusal["reason"] == "sha256_mismatch"
    assert f.stats().refused == 1


def test_an_offer_above_update_max_bytes_is_refused_before_any_byte(
    fresh: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path)
    _aid, token = cp.register(fresh.bootstrap)
    f = fetcher(tmp_path / "agent", max_bytes=offer.size - 1)
    f.offered(offer, f"127.0.0.1:{cp.grpc_port}", token)
    assert f.wait(30)
    assert not (tmp_path / "agent" / "updates").exists()
    (refusal,) = logged(caplog, "update_offer_refused")
    assert refusal["reason"] == "too_large"
    assert refusal["detail"] == (
        f"too_large: {offer.size} bytes is more than update_max_bytes ({offer.size - 1})"
    )
    assert f.stats().bytes_fetched == 0


def test_an_unauthenticated_fetch_gets_nothing(fresh: Served, tmp_path: Path) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path)
    f = fetcher(tmp_path / "agent")
    with pytest.raises(OSError, match="HTTP 401"):
        f.fetch(offer, cp.http, "sn1.0000000000000000.AAAA")
    assert (tmp_path / "agent" / "updates" / f"{offer.sha256}.part").stat().st_size == 0


def test_the_heartbeat_sink_hands_an_offer_to_the_fetcher_which_fetches_it(
    fresh: Served, tmp_path: Path
) -> None:
    cp = fresh.cp
    offer = published(cp, tmp_path)
    time.sleep(2.1)  # the running control plane reads offers at most every 2 s
    agent_dir = tmp_path / "agent"
    f = fetcher(agent_dir)
    sink = GrpcSink(
        cp.target,
        fresh.bootstrap,
        agent_dir,
        str(uuid.uuid4()),
        options=SinkOptions(rpc_deadline_s=5.0, backoff_initial_s=0.05, backoff_max_s=0.3),
        offers=f.offered,
    )
    try:
        image = ImageIdentity("0.1.0", "ab" * 32, "a")
        sink.send(replace(full_snapshot(), image_state=ImageState(image, None)))
        assert sink.flush(10)
        deadline = time.monotonic() + 30
        bundle = agent_dir / "updates" / f"{offer.sha256}.bundle"
        while not bundle.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bundle.read_bytes() == (tmp_path / "0.2.0.bundle").read_bytes()
    finally:
        sink.close()
