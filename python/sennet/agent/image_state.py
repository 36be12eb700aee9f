"""What the appliance runs and how its last update ended, for the heartbeat and /metrics.

Two files written by root on the appliance, read here as data only:
`/run/sennet/image.env` (rc.boot copies `sennet.slot`, `sennet.version` and
`sennet.image_digest` from the kernel command line into `KEY=value` lines) and
the updater's `status.json` (`last_outcome`). On an ordinary host neither
exists, and then the fields stay unset: that is not an error. A file that
exists but cannot be parsed is logged once per change of its content and
otherwise treated as absent, because a telemetry agent must keep reporting
counters whatever the updater left behind.

Both files are small; each is read with a size bound and without following a
symbolic link at the last component, so a planted link cannot make the agent
read something else.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sennet.common.log import event

log = logging.getLogger("sennet.agent.image_state")

MAX_FILE_BYTES = 64 << 10
_ENV_KEYS = {
    "SENNET_IMAGE_VERSION": "version",
    "SENNET_IMAGE_DIGEST": "digest",
    "SENNET_SLOT": "slot",
}


@dataclass(frozen=True)
class ImageIdentity:
    version: str
    digest: str
    slot: str


@dataclass(frozen=True)
class UpdateOutcome:
    result: str
    reason: str
    from_version: str
    to_version: str
    at_unix: float  # 0.0 when the updater did not say


@dataclass(frozen=True)
class ImageState:
    image: ImageIdentity | None = None
    last_update: UpdateOutcome | None = None


NO_IMAGE = ImageState()  # an ordinary host: neither file


class ImageStateError(ValueError):
    """A file exists but does not say what it should; the message names file and key."""


def _read_small(path: Path) -> bytes | None:
    """The file's bytes, None if it does not exist; refuses links and oversized files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImageStateError(f"{path}: cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageStateError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data


def parse_image_env(text: str, where: str) -> ImageIdentity | None:
    """`KEY=value` lines (values optionally quoted); None when no image key is present."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ImageStateError(f"{where}:{number}: not KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key.strip() in _ENV_KEYS:
            found[_ENV_KEYS[key.strip()]] = value
    if not found:
        return None
    return ImageIdentity(found.get("version", ""), found.get("digest", ""), found.get("slot", ""))


def _at(value: object, where: str) -> float:
    """`at` as Unix seconds: a number, or ISO 8601 text with a zone."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise ImageStateError(f"{where}: last_outcome.at: want a number or ISO 8601 text")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ImageStateError(
                f"{where}: last_outcome.at: {value[:40]!r} is not ISO 8601"
            ) from None
        if parsed.tzinfo is None:
            raise ImageStateError(f"{where}: last_outcome.at: {value[:40]!r} has no time zone")
        return parsed.timestamp()
    raise ImageStateError(f"{where}: last_outcome.at: want a number or ISO 8601 text")


def parse_status(data: bytes, where: str) -> UpdateOutcome | None:
    """`last_outcome` of the updater's status.json; None when it has none yet."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageStateError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ImageStateError(f"{where}: want a JSON object")
    last = doc.get("last_outcome")
    if last is None:
        return None
    if not isinstance(last, dict):
        raise ImageStateError(f"{where}: last_outcome: want an object")
    texts: dict[str, str] = {}
    for key in ("result", "reason", "from_version", "to_version"):
        value = last.get(key) or ""
        if not isinstance(value, str):
            raise ImageStateError(f"{where}: last_outcome.{key}: want text")
        texts[key] = value
    return UpdateOutcome(**texts, at_unix=_at(last.get("at"), where))


class ImageStateReader:
    """Reads both files each time; remembers the last complaint so it is logged once."""

    def __init__(self, image_env: Path, update_status: Path) -> None:
        self._image_env = image_env
        self._status = update_status
        self._complaints: dict[Path, str] = {}

    def read(self) -> ImageState:
        return ImageState(self._image(), self._outcome())

    def _image(self) -> ImageIdentity | None:
        try:
            data = _read_small(self._image_env)
            found = None if data is None else parse_image_env(data.decode(), str(self._image_env))
        except (ImageStateError, UnicodeDecodeError) as exc:
            self._complain(self._image_env, str(exc))
            return None
        self._complaints.pop(self._image_env, None)
        return found

    def _outcome(self) -> UpdateOutcome | None:
        try:
            data = _read_small(self._status)
            found = None if data is None else parse_status(data, str(self._status))
        except ImageStateError as exc:
            self._complain(self._status, str(exc))
            return None
        self._complaints.pop(self._status, None)
        return found

    def _complain(self, path: Path, why: str) -> None:
        if self._complaints.get(path) != why:
            self._complaints[path] = why
            event(log, "image_state_unreadable", logging.WARNING, file=path, error=why)
