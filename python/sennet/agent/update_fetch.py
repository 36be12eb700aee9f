"""Fetching an update bundle the control plane offered, for the device's updater.

The agent never installs anything (it runs without the privileges to): it
downloads the offered bundle into `state_dir/agent/updates/<sha256>.part` in
bounded pieces (`Range` requests of `chunk_bytes`), checks the whole file's
sha256 against the offer, renames the part to `<sha256>.bundle` and only then
writes `<sha256>.request.json` ({"apply_at": ...}). The request is the
updater's signal (it rejects a request whose bundle is missing), so it never
sees a request before its bundle is complete; it takes both away, verifies the
signature and everything else itself, and reads these files as data only. A
bundle handed over is not fetched again by this agent process, even though the
offer keeps coming until the new version runs.

A cut connection, a control plane that went away or an agent restart leaves
the part file where it is; the next offer (every heartbeat carries it while the
appliance runs another version) resumes from the part's size. An offer larger
than `update_max_bytes`, a malformed offer, or a bundle whose digest does not
match (the part is deleted) is refused with one log line naming why, and not
tried again by this agent process.

http.client (with the email package it parses headers with) and hashlib are
imported when a fetch starts, not with this module: every agent with a control
plane builds a fetcher, and an idle one never downloads (issue 16: about 1 MiB
of the idle agent's RSS).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sennet.common.files import write_atomic
from sennet.common.log import event
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

if TYPE_CHECKING:
    import http.client

log = logging.getLogger("sennet.agent.update_fetch")

UPDATES_DIR = "updates"  # under state_dir/agent/
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_APPLY_RE = re.compile(r"^(now|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d)$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class FetchRefused(Exception):
    """The offer or the bytes are wrong: give up on this offer (reason is a snake_case word)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class FetchOptions:
    max_bytes: int
    chunk_bytes: int = 1 << 20
    timeout_s: float = 30.0
    base_url: str = ""  # "http(s)://host:port"; "" = the gRPC host and the offer's port
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""


@dataclass(frozen=True)
class FetchStats:
    bytes_fetched: int
    completed: int
    refused: int
    interrupted: int


def check_offer(offer: pb.UpdateOffer, max_bytes: int) -> None:
    """Refuse an offer this agent must not act on, naming what is wrong."""
    if not _SHA_RE.match(offer.sha256):
        raise FetchRefused("bad_offer", "sha256 is not 64 lower-case hex digits")
    if offer.download_path != f"/updates/{offer.sha256}.bundle":
        raise FetchRefused("bad_offer", f"download_path {offer.download_path[:80]!r}")
    if not _APPLY_RE.match(offer.apply_at):
        raise FetchRefused("bad_offer", f"apply_at {offer.apply_at[:20]!r}")
    if offer.size == 0:
        raise FetchRefused("bad_offer", "size is 0")
    if offer.size > max_bytes:
        raise FetchRefused(
            "too_large", f"{offer.size} bytes is more than update_max_bytes ({max_bytes})"
        )


def _split_url(url: str) -> tuple[bool, str, int]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise FetchRefused("bad_url", f"{url!r} is not http(s)://host:port")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise FetchRefused("bad_url", f"{url!r} has no host:port")
    return scheme == "https", host.strip("[]"), int(port)


def _https(
    host: str, port: int, ctx: ssl.SSLContext, server_name: str, timeout: float
) -> http.client.HTTPSConnection:
    """HTTPS that checks the certificate against `server_name` instead of the host dialled."""
    import http.client

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((self.host, self.port), self.timeout)
            self.sock = ctx.wrap_socket(sock, server_hostname=server_name)

    return Https(host, port, context=ctx, timeout=timeout)


class UpdateFetcher:
    """One download at a time, on its own thread; `offered` is safe from the sink's thread."""

    def __init__(self, agent_dir: Path, opts: FetchOptions) -> None:
        self.dir = agent_dir / UPDATES_DIR
        self._opts = opts
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._given_up: set[str] = set()  # offers refused by this process: not tried again
        self._handed_over: set[str] = set()  # fetched and left for the updater
        self._bytes = 0
        self._completed = 0
        self._refused = 0
        self._interrupted = 0

    def stats(self) -> FetchStats:
        with self._lock:
            return FetchStats(self._bytes, self._completed, self._refused, self._interrupted)

    def offered(self, offer: pb.UpdateOffer, grpc_address: str, token: str) -> None:
        """Start (or resume) fetching `offer` unless it is done, refused or already running."""
        with self._lock:
            if offer.sha256 in self._given_up or offer.sha256 in self._handed_over:
                return
            if self._thread is not None and self._thread.is_alive():
                return
            if _SHA_RE.match(offer.sha256) and (self.dir / f"{offer.sha256}.bundle").exists():
                return
            self._thread = threading.Thread(
                target=self._run,
                args=(offer, grpc_address, token),
                name="sennet-update-fetch",
                daemon=True,
            )
            self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Wait for a running fetch to end (tests, shutdown); True when none is running."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self, offer: pb.UpdateOffer, grpc_address: str, token: str) -> None:
        try:
            check_offer(offer, self._opts.max_bytes)
            self.fetch(offer, self._base_url(grpc_address, offer), token)
        except FetchRefused as exc:
            with self._lock:
                self._given_up.add(offer.sha256)
                self._refused += 1
            event(
                log,
                "update_offer_refused",
                logging.ERROR,
                version=offer.version,
                sha256=offer.sha256,
                size=offer.size,
                reason=exc.reason,
                detail=str(exc),
            )
        except OSError as exc:
            with self._lock:
                self._interrupted += 1
            part = self.dir / f"{offer.sha256}.part"
            have = part.stat().st_size if part.exists() else 0
            event(
                log,
                "update_fetch_interrupted",
                logging.WARNING,
                version=offer.version,
                have=have,
                size=offer.size,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _base_url(self, grpc_address: str, offer: pb.UpdateOffer) -> str:
        if self._opts.base_url:
            return self._opts.base_url
        host = grpc_address.rpartition(":")[0] or grpc_address
        scheme = "https" if self._opts.tls_ca else "http"
        return f"{scheme}://{host}:{offer.download_port}"

    def _connection(self, base_url: str) -> http.client.HTTPConnection:
        import http.client

        tls, host, port = _split_url(base_url)
        if not tls:
            return http.client.HTTPConnection(host, port, timeout=self._opts.timeout_s)
        ctx = ssl.create_default_context(cafile=self._opts.tls_ca or None)
        if self._opts.tls_cert:
            ctx.load_cert_chain(self._opts.tls_cert, self._opts.tls_key or None)
        return _https(host, port, ctx, self._opts.tls_server_name or host, self._opts.timeout_s)

    def fetch(self, offer: pb.UpdateOffer, base_url: str, token: str) -> Path:
        """Download (resuming), verify and hand over; returns the bundle's path.

        Raises OSError when the transfer breaks (the part file keeps every whole
        piece received) and `FetchRefused` when the offer or the bytes are wrong.
        """
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        part = self.dir / f"{offer.sha256}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "ab") as out:
            have = os.fstat(out.fileno()).st_size
            if have > offer.size:  # not ours to keep: a different bundle under this name
                out.truncate(0)
                have = 0
            if have:
                event(log, "update_fetch_resumed", version=offer.version, have=have)
            conn = self._connection(base_url)
            try:
                while have < offer.size:
                    got = self._piece(conn, offer, have, token)
                    out.write(got)
                    out.flush()
                    os.fsync(out.fileno())
                    have += len(got)
                    with self._lock:
                        self._bytes += len(got)
            finally:
                conn.close()
        digest = _sha256_of(part)
        if digest != offer.sha256:
            part.unlink()
            raise FetchRefused("sha256_mismatch", f"got {digest}, offered {offer.sha256}")
        bundle = self.dir / f"{offer.sha256}.bundle"
        os.replace(part, bundle)
        _fsync_dir(self.dir)
        request = {"apply_at": offer.apply_at, "version": offer.version, "size": offer.size}
        write_atomic(  # last: the updater's signal that the bundle beside it is complete
            self.dir / f"{offer.sha256}.request.json",
            json.dumps(request, sort_keys=True).encode() + b"\n",
            mode=0o640,
        )
        with self._lock:
            self._completed += 1
            self._handed_over.add(offer.sha256)
        event(
            log,
            "update_fetched",
            version=offer.version,
            sha256=offer.sha256,
            size=offer.size,
            apply_at=offer.apply_at,
        )
        return bundle

    def _piece(
        self, conn: http.client.HTTPConnection, offer: pb.UpdateOffer, start: int, token: str
    ) -> bytes:
        """One Range request: at most `chunk_bytes` from `start`, checked against the offer."""
        import http.client

        end = min(start + self._opts.chunk_bytes, offer.size) - 1
        try:
            conn.request(
                "GET",
                offer.download_path,
                headers={"Authorization": f"Bearer {token}", "Range": f"bytes={start}-{end}"},
            )
            resp = conn.getresponse()
            body = resp.read(end - start + 2)  # one byte more than asked shows an overlong answer
        except http.client.HTTPException as exc:  # a cut link: IncompleteRead, BadStatusLine
            raise OSError(f"transfer broken at {start}: {exc!r}") from exc
        if resp.status in (401, 403, 404):
            raise OSError(f"HTTP {resp.status} for {offer.download_path}")
        if resp.status != 206:
            raise FetchRefused("bad_response", f"HTTP {resp.status} to a Range request")
        m = _CONTENT_RANGE_RE.match(resp.getheader("content-range") or "")
        if m is None or (int(m.group(1)), int(m.group(2))) != (start, end):
            raise FetchRefused("bad_response", f"Content-Range {resp.getheader('content-range')}")
        if int(m.group(3)) != offer.size:
            raise FetchRefused(
                "size_mismatch", f"server has {m.group(3)} bytes, offered {offer.size}"
            )
        if len(body) != end - start + 1:
            raise OSError(f"short or long piece: {len(body)} bytes for {start}-{end}")
        return body


def _sha256_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
