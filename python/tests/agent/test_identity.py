"""The agent ID survives restarts and recovers from damaged state where it can."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

from sennet.agent import identity


def test_id_is_created_once_and_stable_across_restarts(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path / "state")
    second = identity.load_or_create(tmp_path / "state")
    assert first.agent_id == second.agent_id
    assert (first.recovered, second.recovered) == ("", "")
    mode = stat.S_IMODE((tmp_path / "state" / identity.FILE).stat().st_mode)
    assert mode == 0o600


def test_corrupt_primary_is_recovered_from_backup_and_quarantined(tmp_path: Path) -> None:
    original = identity.load_or_create(tmp_path).agent_id
    (tmp_path / identity.FILE).write_text('{"agent_id": "trunc')
    again = identity.load_or_create(tmp_path)
    assert (again.agent_id, again.recovered) == (original, "backup")
    assert len(list(tmp_path.glob("identity.json.corrupt-*"))) == 1
    assert json.loads((tmp_path / identity.FILE).read_text())["agent_id"] == original
    assert identity.load_or_create(tmp_path).recovered == ""


def test_id_is_salvaged_from_damaged_files_when_still_legible(tmp_path: Path) -> None:
    original = identity.load_or_create(tmp_path).agent_id
    (tmp_path / identity.FILE).write_text(f'{{"agent_id": "{original}", "created_at": ')
    (tmp_path / identity.BACKUP).write_bytes(b"\x00\x00garbage")
    again = identity.load_or_create(tmp_path)
    assert (again.agent_id, again.recovered) == (original, "salvaged")


def test_unrecoverable_state_gets_a_new_id_and_keeps_the_evidence(tmp_path: Path) -> None:
    identity.load_or_create(tmp_path)
    (tmp_path / identity.FILE).write_bytes(b"\xff\xfe")
    (tmp_path / identity.BACKUP).write_bytes(b"")
    again = identity.load_or_create(tmp_path)
    assert again.recovered == "new-after-corruption"
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 2
    assert identity.load_or_create(tmp_path).agent_id == again.agent_id


def test_missing_backup_is_restored(tmp_path: Path) -> None:
    original = identity.load_or_create(tmp_path).agent_id
    (tmp_path / identity.BACKUP).unlink()
    assert identity.load_or_create(tmp_path).agent_id == original
    assert json.loads((tmp_path / identity.BACKUP).read_text())["agent_id"] == original


def test_an_id_written_in_another_uuid_form_is_read_in_the_canonical_form(
    tmp_path: Path,
) -> None:
    canonical = "0a513e27-9390-40bd-80a1-2e6bbfbbc241"
    for form in (canonical.upper(), "{" + canonical + "}", "urn:uuid:" + canonical):
        blob = json.dumps({"agent_id": form, "created_at": 1.5}).encode()
        for name in (identity.FILE, identity.BACKUP):
            (tmp_path / name).write_bytes(blob)
        again = identity.load_or_create(tmp_path)
        assert (again.agent_id, again.created_at, again.recovered) == (canonical, 1.5, ""), form


def test_a_new_id_is_a_random_version_4_uuid_in_canonical_form() -> None:
    ids = [identity.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for agent_id in ids:
        parsed = uuid.UUID(agent_id)
        assert (str(parsed), parsed.version, parsed.variant) == (agent_id, 4, uuid.RFC_4122)
