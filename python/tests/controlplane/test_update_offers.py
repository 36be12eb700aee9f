"""Update offers: `update publish`, the offer in a heartbeat's answer, and the bundle download.

Real control-plane process and CLI, real gRPC, real HTTP (Range requests answered by the
control plane's own listener), real SQLite. The bundles are shaped like make-bundle's
(see sennet.testing.bundles: the signature member is a placeholder, because neither the
control plane nor the agent checks it; the device's updater does).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import grpc
import pytest

from sennet.controlplane.store import Store
from sennet.controlplane.update_offers import OfferBook
from sennet.proto import contract
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.bundles import make_bundle
from sennet.testing.controlplane import ControlPlane, Served, cli, heartbeat_request

DIGEST = "ab" * 32


def beat(cp: ControlPlane, agent_id: str, token: str, version: str | None) -> pb.HeartbeatResponse:
    """A heartbeat reporting image `version` (None: an agent on an ordinary host)."""
    req = heartbeat_request(agent_id)
    if version is not None:
        req.image.CopyFrom(pb.ImageIdentity(version=version, digest=DIGEST, slot="a"))
    code, details, out = cp.call_raw(contract.HEARTBEAT, req.SerializeToString(), token)
    assert code == grpc.StatusCode.OK, details
    return pb.HeartbeatResponse.FromString(out)


def get(
    cp: ControlPlane, path: str, token: str | None, rng: str | None = None
) -> tuple[int, Message, bytes]:
    """GET on the HTTP port: status, headers (names case-insensitive), body."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if rng is not None:
        headers["Range"] = rng
    req = urllib.request.Request(cp.http + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def publish(cp: ControlPlane, bundle: Path, *flags: str) -> str:
    result = cli(cp.db, "update", "publish", str(bundle), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_published_bundle_is_offered_to_appliances_running_another_version_only(
    fresh: Served, tmp_path: Path
) -> None:
    cp = fresh.cp
    bundle = tmp_path / "sennet-0.2.0.bundle"
    sha = make_bundle(bundle, "0.2.0")
    size = bundle.stat().st_size
    out = publish(cp, bundle, "--apply-at", "02:00-04:30")
    assert out == (
        f"offer 1: version 0.2.0 sha256 {sha} size {size} apply_at 02:00-04:30 agents all\n"
    )
    stored = cp.db.parent / "bundles" / f"{sha}.bundle"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    listed = cli(cp.db, "update", "list", "--json")
    assert json.loads(listed.stdout)["sha256"] == sha

    old_id, old_token = cp.register(fresh.bootstrap)
    new_id, new_token = cp.register(fresh.bootstrap)
    host_id, host_token = cp.register(fresh.bootstrap)
    time.sleep(2.1)  # the running control plane reads offers at most every 2 s
    answer = beat(cp, old_id, old_token, "0.1.0")
    assert answer.HasField("update_offer")
    assert answer.update_offer == pb.UpdateOffer(
        version="0.2.0",
        sha256=sha,
        size=size,
        download_path=f"/updates/{sha}.bundle",
        download_port=cp.http_port,
        apply_at="02:00-04:30",
    )
    assert not beat(cp, new_id, new_token, "0.2.0").HasField("update_offer")
    assert not beat(cp, host_id, host_token, None).HasField("update_offer")

    assert cli(cp.db, "update", "withdraw", "1").returncode == 0
    time.sleep(2.1)
    assert not beat(cp, old_id, old_token, "0.1.0").HasField("update_offer")


def test_an_appliance_that_rolled_back_that_version_is_not_offered_it_again_until_republished(
    fresh: Served, tmp_path: Path
) -> None:
    cp = fresh.cp
    agent_id, token = cp.register(fresh.bootstrap)
    bundle = tmp_path / "b.bundle"
    make_bundle(bundle, "0.2.0")
    publish(cp, bundle)
    time.sleep(2.1)

    def after(result: str, at: float) -> pb.HeartbeatResponse:
        req = heartbeat_request(agent_id)
        req.image.CopyFrom(pb.ImageIdentity(version="0.1.0", digest=DIGEST, slot="a"))
        req.last_update.CopyFrom(
            pb.UpdateOutcome(
                result=result,
                reason="health_check_failed",
                from_version="0.1.0",
                to_version="0.2.0",
                at_unix=at,
            )
        )
        code, details, out = cp.call_raw(contract.HEARTBEAT, req.SerializeToString(), token)
        assert code == grpc.StatusCode.OK, details
        return pb.HeartbeatResponse.FromString(out)

    before_offer = time.time() - 3600
    assert after("rolled_back", before_offer).HasField("update_offer")  # an older attempt
    assert not after("rolled_back", time.time()).HasField("update_offer")
    tried_at = time.time()  # the appliance's failed try, before the operator's retry
    publish(cp, bundle)  # the operator's retry: a newer offer
    time.sleep(2.1)
    assert after("rolled_back", tried_at).update_offer.version == "0.2.0"


def test_an_offer_for_named_agents_reaches_only_them(fresh: Served, tmp_path: Path) -> None:
    cp = fresh.cp
    chosen_id, chosen_token = cp.register(fresh.bootstrap)
    other_id, other_token = cp.register(fresh.bootstrap)
    bundle = tmp_path / "b.bundle"
    make_bundle(bundle, "0.3.0")
    publish(cp, bundle, "--agent", chosen_id)
    time.sleep(2.1)
    assert beat(cp, chosen_id, chosen_token, "0.1.0").update_offer.version == "0.3.0"
    assert not beat(cp, other_id, other_token, "0.1.0").HasField("update_offer")


def test_publish_refuses_what_is_not_a_bundle_and_a_bad_window(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a tar at all" * 100)
    result = cli(db, "update", "publish", str(junk))
    assert result.returncode == 2
    assert f"{junk}: not a readable bundle" in result.stderr
    bundle = tmp_path / "ok.bundle"
    make_bundle(bundle, "0.2.0")
    result = cli(db, "update", "publish", str(bundle), "--apply-at", "25:00-26:00")
    assert result.returncode == 2
    assert "--apply-at: '25:00-26:00' is not" in result.stderr
    result = cli(db, "update", "withdraw", "7")
    assert (result.returncode, "no active offer with id 7" in result.stderr) == (2, True)


def test_bundles_are_served_with_the_agent_token_and_ranges(fresh: Served, tmp_path: Path) -> None:
    cp = fresh.cp
    bundle = tmp_path / "b.bundle"
    sha = make_bundle(bundle, "0.2.0", payload_bytes=700_000)
    data = bundle.read_bytes()
    size = len(data)
    publish(cp, bundle)
    _agent_id, token = cp.register(fresh.bootstrap)
    path = f"/updates/{sha}.bundle"

    assert get(cp, path, None)[0] == 401
    assert get(cp, path, "sn1.0000000000000000.AAAA")[0] == 401
    assert get(cp, path, fresh.bootstrap)[0] == 403  # a bootstrap token is not an agent's

    status, headers, body = get(cp, path, token)
    assert (status, headers.get("Accept-Ranges"), body) == (200, "bytes", data)
    status, headers, body = get(cp, path, token, "bytes=1000-1999")
    assert (status, headers.get("Content-Range"), body) == (
        206,
        f"bytes 1000-1999/{size}",
        data[1000:2000],
    )
    status, headers, body = get(cp, path, token, f"bytes={size - 10}-")
    assert (status, body) == (206, data[-10:])
    status, headers, body = get(cp, path, token, "bytes=-5")
    assert (status, body) == (206, data[-5:])
    for bad in (f"bytes={size}-", "bytes=10-5", "bytes=0-1,5-9", "pages=1-2"):
        status, headers, _ = get(cp, path, token, bad)
        assert (status, headers.get("Content-Range")) == (416, f"bytes */{size}"), bad
    assert get(cp, "/updates/" + "0" * 64 + ".bundle", token)[0] == 404
    assert get(cp, "/updates/../cp.db", token)[0] == 404
    # withdrawn: no longer served, though the file stays in the bundles directory
    assert cli(cp.db, "update", "withdraw", "1").returncode == 0
    time.sleep(2.1)
    assert get(cp, path, token)[0] == 404


def test_an_unreadable_offer_table_never_fails_a_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "cp.db")
    store.migrate()
    book = OfferBook(store, cache_s=0)
    store.local().execute("DROP TABLE update_offers")  # a store that cannot answer
    req = heartbeat_request("0b1c2d3e-0000-4000-8000-000000000001")
    req.image.CopyFrom(pb.ImageIdentity(version="0.1.0", digest=DIGEST, slot="a"))
    assert book.offer_for(req) is None
    (said,) = [r for r in caplog.records if r.getMessage() == "offers_unreadable"]
    assert "no such table: update_offers" in getattr(said, "fields", {})["error"]
    store.close()
