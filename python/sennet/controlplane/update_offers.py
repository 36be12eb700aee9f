"""Update bundles an operator publishes, and which one a heartbeat's answer offers.

`sennet-controlplane update publish BUNDLE` copies the bundle into the bundle
directory beside the database (`<db dir>/bundles/<sha256>.bundle`), reading the
version from its `manifest.json` (the first tar member, see images/README.md)
and hashing it as it copies; the row in `update_offers` records version, sha256,
size, optional target agents and when the device may apply it. The control plane
does not verify the bundle's signature: the device does, against the keys baked
into its image, before it writes a byte, so nothing here is trusted by the device.

A heartbeat whose image version differs from the newest offer for that agent
gets the offer in its answer, unless the appliance reports that an attempt at
that version since the offer was published did not commit (rolled back,
refused, failed): offering it again would loop, so the operator decides (a new
`publish` of the same bundle is a new offer, and is tried). Agents that report
no image (an agent on an ordinary host) are never offered one: there is no
updater to hand it to.
Offers are read from the database at most every `cache_s` seconds, so an offer
published from the command line (another process) reaches agents within that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sennet.common.errors import UserError
from sennet.common.log import event
from sennet.controlplane.image_report import VERSION_RE
from sennet.controlplane.store import Store
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

log = logging.getLogger("sennet.controlplane.update_offers")
BUNDLE_FORMAT = "sennet-bundle/1"
MAX_MANIFEST_BYTES = 64 << 10
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_COPY_CHUNK = 1 << 20


def check_apply_at(value: str) -> str:
    """ "now" or a daily window "HH:MM-HH:MM" (UTC, as the updater reads it; may cross midnight)."""
    if value == "now" or _WINDOW_RE.match(value):
        return value
    raise UserError(f'--apply-at: {value!r} is not "now" or a daily window "HH:MM-HH:MM"')


def bundles_dir(db: Path) -> Path:
    """Where published bundles live: beside the database, so one backup holds both."""
    return db.parent / "bundles"


def bundle_path(db: Path, sha256: str) -> Path | None:
    """The stored bundle with this digest, or None (the name is checked, never joined raw)."""
    if not _SHA_RE.match(sha256):
        return None
    path = bundles_dir(db) / f"{sha256}.bundle"
    return path if path.is_file() else None


@dataclass(frozen=True)
class Offer:
    offer_id: int
    version: str
    sha256: str
    size: int
    apply_at: str
    targets: tuple[str, ...]  # empty: every agent
    published_at: float

    @property
    def download_path(self) -> str:
        return f"/updates/{self.sha256}.bundle"


def read_manifest(path: Path) -> dict[str, object]:
    """The bundle's manifest.json (its first member), refused with the reason if absent or odd."""
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            if first is None or first.name != "manifest.json" or not first.isfile():
                raise UserError(f"{path}: the first member is not manifest.json; not a bundle")
            if first.size > MAX_MANIFEST_BYTES:
                raise UserError(f"{path}: manifest.json is larger than {MAX_MANIFEST_BYTES} bytes")
            f = tar.extractfile(first)
            assert f is not None  # a regular file, checked above
            doc = json.loads(f.read())
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{path}: not a readable bundle (uncompressed tar): {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: manifest.json is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path}: manifest.json format is not {BUNDLE_FORMAT!r}")
    version = doc.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise UserError(f"{path}: manifest.json version {version!r} is not a version")
    return doc


def _copy_hashing(src: Path, dest_dir: Path) -> tuple[str, int, Path]:
    """Copy `src` into `dest_dir` under a temporary name; returns sha256, size, temp path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size, tmp


def publish(
    store: Store, bundle: Path, targets: tuple[str, ...], apply_at: str, now: float
) -> Offer:
    """Copy the bundle into the bundle directory and record the offer; returns it."""
    if not bundle.is_file():
        raise UserError(f"{bundle}: no such bundle file")
    check_apply_at(apply_at)
    doc = read_manifest(bundle)
    version = str(doc["version"])
    dest_dir = bundles_dir(store.path)
    try:
        sha, size, tmp = _copy_hashing(bundle, dest_dir)
        os.replace(tmp, dest_dir / f"{sha}.bundle")
        fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot store the bundle in {dest_dir}: {exc}") from None
    conn = store.local()
    cur = conn.execute(
        "INSERT INTO update_offers (version, sha256, size, apply_at, targets, published_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (version, sha, size, apply_at, ",".join(targets), now),
    )
    assert cur.lastrowid is not None
    return Offer(cur.lastrowid, version, sha, size, apply_at, targets, now)


def withdraw(store: Store, offer_id: int, now: float) -> bool:
    cur = store.local().execute(
        "UPDATE update_offers SET withdrawn_at = ? WHERE offer_id = ? AND withdrawn_at IS NULL",
        (now, offer_id),
    )
    return cur.rowcount == 1


def active(conn: sqlite3.Connection) -> list[Offer]:
    """Offers not withdrawn, newest first."""
    rows = conn.execute(
        "SELECT offer_id, version, sha256, size, apply_at, targets, published_at"
        " FROM update_offers WHERE withdrawn_at IS NULL ORDER BY offer_id DESC"
    )
    return [
        Offer(r[0], r[1], r[2], r[3], r[4], tuple(t for t in r[5].split(",") if t), r[6])
        for r in rows
    ]


def _failed_since(req: pb.HeartbeatRequest, offer: Offer) -> bool:
    """The appliance reports an attempt at this version, after the offer, that did not commit.

    Offering it again would loop: fetch, install, roll back, boot the old slot, be
    offered again. Publishing the bundle again (a newer offer) is the operator's retry.
    """
    if not req.HasField("last_update"):
        return False
    last = req.last_update
    return (
        last.to_version == offer.version
        and last.result != "committed"
        and last.at_unix >= offer.published_at
    )


class OfferBook:
    """Which offer (if any) a heartbeat's answer carries; reads the database every `cache_s`."""

    def __init__(self, store: Store, cache_s: float = 2.0) -> None:
        self._store = store
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._read_at = -1e18
        self._offers: list[Offer] = []
        self.http_port = 0  # the HTTP port agents download from, set once it is bound

    def _current(self) -> list[Offer]:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at < self._cache_s:
                return self._offers
        try:
            offers = active(self._store.local())
        except (sqlite3.Error, UserError) as exc:
            # A failing store must not fail heartbeats here (the writer answers for the
            # store); the offers last read stay, and the next read is `cache_s` away.
            event(log, "offers_unreadable", logging.WARNING, error=str(exc))
            with self._lock:
                self._read_at = now
                return self._offers
        with self._lock:
            self._offers, self._read_at = offers, now
        return offers

    def offered(self, sha256: str) -> bool:
        """Whether a bundle is in an offer not withdrawn (only those are served)."""
        return any(offer.sha256 == sha256 for offer in self._current())

    def offer_for(self, req: pb.HeartbeatRequest) -> pb.UpdateOffer | None:
        """The newest offer for this agent, unless it runs that version; as the reply carries it."""
        if not req.HasField("image"):
            return None
        for offer in self._current():
            if offer.targets and req.agent_id not in offer.targets:
                continue
            if offer.version == req.image.version:
                return None  # the newest offer for it is what it runs: nothing to do
            if _failed_since(req, offer):
                return None  # tried since it was published and not committed: no retry loop
            return pb.UpdateOffer(
                version=offer.version,
                sha256=offer.sha256,
                size=offer.size,
                download_path=offer.download_path,
                download_port=self.http_port,
                apply_at=offer.apply_at,
            )
        return None
