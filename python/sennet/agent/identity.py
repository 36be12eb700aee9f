"""A stable agent ID, kept in the state directory across restarts and reboots.

The control plane keys everything on this ID, so losing it splits an agent's
history in two. It is written twice (identity.json and identity.json.bak),
each atomically (temp file, fsync, rename, directory fsync). On start a corrupt primary is
reported, moved aside for inspection, and recovered from the backup; if both
are damaged, a UUID still legible in either file is salvaged. Only when nothing
is recoverable is a new ID minted, and that is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sennet.agent.statedir import Untrusted, read_root_file, refuse
from sennet.common.errors import UserError
from sennet.common.files import write_atomic
from sennet.common.log import event

log = logging.getLogger("sennet.agent.identity")

FILE = "identity.json"
BACKUP = "identity.json.bak"
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Identity:
    agent_id: str
    created_at: float
    recovered: str  # "" (clean), "backup", "salvaged" or "new-after-corruption"


def _parse(raw: bytes) -> tuple[str, float]:
    data = json.loads(raw)
    return _canonical(data["agent_id"]), float(data.get("created_at", 0.0))


def _canonical(agent_id: Any) -> str:
    """The ID as `str(uuid.UUID(...))` gives it. Every start reads one, which the agent wrote
    in that form itself: it passes as is, and only another form (upper case, braces, a URN)
    imports uuid, which also imports platform (a quarter MiB of the idle agent's RSS)."""
    if isinstance(agent_id, str) and _UUID_RE.fullmatch(agent_id):
        return agent_id
    import uuid

    return str(uuid.UUID(agent_id))


def new_id() -> str:
    """A random (version 4) UUID as `str(uuid.uuid4())` writes it: what uuid4 does (16 random
    bytes, the version and variant bits set), without importing uuid (see `_canonical`)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _store(state_dir: Path, agent_id: str, created_at: float) -> None:
    blob = json.dumps({"agent_id": agent_id, "created_at": created_at}, indent=1).encode() + b"\n"
    write_atomic(state_dir / FILE, blob)
    write_atomic(state_dir / BACKUP, blob)


def _quarantine(path: Path) -> Path:
    dest = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, dest)
    return dest


def load_or_create(state_dir: Path) -> Identity:
    """Return the persisted identity, recovering from damage where the ID is still known."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise UserError(f"cannot create state_dir {state_dir}: {exc.strerror}") from None
    primary, backup = state_dir / FILE, state_dir / BACKUP
    raws: dict[Path, bytes] = {}
    for p in (primary, backup):
        try:
            raw = read_root_file(p)  # never through a link, never a file another user owns
        except Untrusted as err:
            refuse(err)  # moved aside and logged; the other copy may still hold the ID
            continue
        except OSError as exc:
            raise UserError(f"cannot read {p}: {exc.strerror}") from None
        if raw is not None:
            raws[p] = raw

    if not raws:
        ident = Identity(new_id(), time.time(), "")
        _store(state_dir, ident.agent_id, ident.created_at)
        event(log, "identity_created", agent_id=ident.agent_id, state_dir=str(state_dir))
        return ident

    parsed: dict[Path, tuple[str, float]] = {}
    for p, raw in raws.items():
        try:
            parsed[p] = _parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            event(log, "identity_corrupt", logging.WARNING, file=str(p), error=str(exc)[:200])

    if primary in parsed:
        agent_id, created = parsed[primary]
        recovered = ""
        if parsed.get(backup) != parsed[primary]:
            _store(state_dir, agent_id, created)  # refresh a missing or stale backup
    elif backup in parsed:
        agent_id, created = parsed[backup]
        recovered = "backup"
    else:
        found = [
            m.group(0)
            for raw in raws.values()
            for m in [_UUID_RE.search(raw.decode("latin-1"))]
            if m
        ]
        if found:
            agent_id, created, recovered = found[0], time.time(), "salvaged"
        else:
            agent_id, created, recovered = new_id(), time.time(), "new-after-corruption"

    if recovered:
        for p in raws:
            if p not in parsed:
                moved = _quarantine(p)
                event(
                    log, "identity_quarantined", logging.WARNING, file=str(p), moved_to=str(moved)
                )
        _store(state_dir, agent_id, created)
        level = logging.ERROR if recovered == "new-after-corruption" else logging.WARNING
        event(log, "identity_recovered", level, agent_id=agent_id, how=recovered)
    return Identity(agent_id, created, recovered)
