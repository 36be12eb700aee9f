"""GET /updates/<sha256>.bundle on the HTTP port: offered bundles, with Range.

Agents fetch a bundle in bounded pieces (`Range: bytes=START-END`) and resume
after a cut connection from where their partial file ends, so a flaky link
never starts a large download over. Only an agent's own token opens the door
(the same check a heartbeat passes; a bootstrap token is refused), because a
bundle is a site's software and need not be public; and only a bundle in an
offer not withdrawn is served (404 otherwise), so `update withdraw` also stops
downloads under way, within the offer cache's 2 s. One byte range per request:
a multi-range or unsatisfiable range is answered 416 with `Content-Range:
bytes */SIZE`, a syntactically broken Range header too (an agent never sends
one, so it is a bug worth seeing, not something to paper over with a 200).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from sennet.controlplane.auth import Authenticator
from sennet.controlplane.refusals import RequestError
from sennet.controlplane.update_offers import OfferBook, bundle_path
from sennet.proto.contract import HEARTBEAT

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PATH_RE = re.compile(r"^/updates/([0-9a-f]{64})\.bundle$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 256 << 10


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive for one satisfiable range, else None (answer 416)."""
    m = _RANGE_RE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)


def _header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BundleDownloads:
    """Serves stored bundles to agents; `handles(path)` says whether a path is ours."""

    def __init__(self, auth: Authenticator, db: Path, offers: OfferBook) -> None:
        self._auth = auth
        self._db = db
        self._offers = offers

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith("/updates/")

    async def serve(self, scope: MutableMapping[str, Any], send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"GET only\n", [(b"allow", b"GET, HEAD")])
            return
        try:
            self._auth.authenticate(HEARTBEAT, _header(scope, b"authorization"))
        except RequestError as err:
            status = err.code.http
            await _plain(
                send, status, f"{err.message}\n".encode(), [(b"www-authenticate", b"Bearer")]
            )
            return
        m = PATH_RE.match(scope["path"])
        offered = m is not None and await asyncio.to_thread(self._offers.offered, m.group(1))
        path = bundle_path(self._db, m.group(1)) if m and offered else None
        if path is None:
            await _plain(send, 404, b"no such bundle\n")
            return
        size = path.stat().st_size
        wanted = _header(scope, b"range")
        first, last, status = 0, size - 1, 200
        headers = [(b"accept-ranges", b"bytes"), (b"content-type", b"application/x-tar")]
        if wanted is not None:
            span = parse_range(wanted, size)
            if span is None:
                await _plain(
                    send,
                    416,
                    b"range not satisfiable\n",
                    [(b"content-range", f"bytes */{size}".encode())],
                )
                return
            first, last, status = span[0], span[1], 206
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        length = last - first + 1 if size else 0
        headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD" or length == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        with path.open("rb") as f:
            f.seek(first)
            left = length
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not chunk:  # the file shrank under us: end the response short
                    break
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
        if left > 0:
            await send({"type": "http.response.body", "body": b""})


async def _plain(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
