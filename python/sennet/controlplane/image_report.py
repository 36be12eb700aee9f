"""The appliance image and last update outcome a heartbeat reports: checks, view, storage.

Fields 15 and 16 of HeartbeatRequest are optional (an agent on an ordinary host
sends neither). They become label values of `sennet_agent_image_info` and
`sennet_agent_update_last_outcome`, so every value is checked against a closed
set or a tight pattern: a client must not mint label values at will. The latest
values are kept on the agent's row (migration 5), so /metrics shows them again
after a restart; the history lives in the appliance's own outcome record.
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass

from sennet.controlplane.refusals import invalid
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_REASON = 200  # the updater's reason: a code, sometimes with detail ("agent_not_attached: eth1")
SLOTS = ("a", "b")
RESULTS = ("committed", "rolled_back", "refused", "failed")
_MAX_AT = 32503680000.0  # year 3000: past it a timestamp is corruption, not a clock


@dataclass(frozen=True)
class ImageReport:
    """What `AgentView.image` holds: the running image and the last outcome, either unset."""

    version: str = ""
    digest: str = ""
    slot: str = ""
    result: str = ""  # "" = no outcome reported
    reason: str = ""
    from_version: str = ""
    to_version: str = ""
    at_unix: float = 0.0

    @property
    def has_image(self) -> bool:
        return bool(self.version or self.digest or self.slot)


def _version(value: str, field: str, required: bool) -> None:
    if not value:
        if required:
            raise invalid(field, "is required")
        return
    if not VERSION_RE.match(value):
        raise invalid(field, f"{value[:40]!r} is not a version (1-64 of [A-Za-z0-9._+~-])")


def check(req: pb.HeartbeatRequest) -> None:
    """Refuse an image or outcome that could not come from a real appliance, naming the field."""
    if req.HasField("image"):
        img = req.image
        _version(img.version, "image.version", True)
        if not _DIGEST_RE.match(img.digest):
            raise invalid("image.digest", "must be 64 lower-case hex digits (sha256)")
        if img.slot not in SLOTS:
            raise invalid("image.slot", f"{img.slot[:8]!r} is not one of a, b")
    if req.HasField("last_update"):
        o = req.last_update
        if o.result not in RESULTS:
            raise invalid("last_update.result", f"{o.result[:32]!r} is not one of {RESULTS}")
        if len(o.reason) > MAX_REASON:
            raise invalid(
                "last_update.reason", f"is {len(o.reason)} characters, at most {MAX_REASON}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in o.reason):
            raise invalid("last_update.reason", "contains control characters")
        _version(o.from_version, "last_update.from_version", False)
        _version(o.to_version, "last_update.to_version", False)
        if not math.isfinite(o.at_unix) or not 0 <= o.at_unix <= _MAX_AT:
            raise invalid("last_update.at_unix", f"{o.at_unix} is not a Unix time in 0..{_MAX_AT}")


def of_request(req: pb.HeartbeatRequest, previous: ImageReport | None) -> ImageReport | None:
    """The report after `req`: fields it carries replace, fields it lacks stay as they were.

    A heartbeat without an outcome (the updater's file is briefly absent while it
    is rewritten) must not erase the one the fleet already knows.
    """
    has_image, has_outcome = req.HasField("image"), req.HasField("last_update")
    if not has_image and not has_outcome:
        return previous
    base = previous or ImageReport()
    if has_image:
        base = ImageReport(
            req.image.version,
            req.image.digest,
            req.image.slot,
            base.result,
            base.reason,
            base.from_version,
            base.to_version,
            base.at_unix,
        )
    if has_outcome:
        o = req.last_update
        base = ImageReport(
            base.version,
            base.digest,
            base.slot,
            o.result,
            o.reason,
            o.from_version,
            o.to_version,
            o.at_unix,
        )
    # The same report as before stays the same object: renderers cache by identity.
    return previous if base == previous else base


def save(conn: sqlite3.Connection, agent_id: str, report: ImageReport | None) -> None:
    """Keep the latest report on the agent's row, inside the writer's transaction."""
    if report is None:
        return
    conn.execute(
        "UPDATE agents SET image_version = ?, image_digest = ?, image_slot = ?,"
        " update_result = ?, update_reason = ?, update_from_version = ?,"
        " update_to_version = ?, update_at = ? WHERE agent_id = ?",
        (
            report.version,
            report.digest,
            report.slot,
            report.result,
            report.reason,
            report.from_version,
            report.to_version,
            report.at_unix,
            agent_id,
        ),
    )


def load(conn: sqlite3.Connection, agent_id: str | None = None) -> dict[str, ImageReport]:
    """Stored reports by agent id (only agents that ever sent one)."""
    sql = (
        "SELECT agent_id, image_version, image_digest, image_slot, update_result, update_reason,"
        " update_from_version, update_to_version, update_at FROM agents"
        " WHERE (image_version != '' OR update_result != '')"
    )
    args: tuple[str, ...] = ()
    if agent_id is not None:
        sql += " AND agent_id = ?"
        args = (agent_id,)
    return {row[0]: ImageReport(*row[1:]) for row in conn.execute(sql, args)}
