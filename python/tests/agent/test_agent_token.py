"""The agent token file: private, replaced whole, and only offered where it was issued."""

from __future__ import annotations

import stat
from pathlib import Path

from sennet.agent.sinks.agent_token import TOKEN_FILE, TokenFile


def test_a_stored_token_is_mode_0600_even_over_a_looser_file(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("{}")
    (tmp_path / TOKEN_FILE).chmod(0o644)
    TokenFile(tmp_path, "agent-1", "cp:7443").store("sa.1.secret")
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKEN_FILE]  # no temp file left


def test_a_token_is_only_offered_to_the_agent_and_control_plane_it_was_issued_for(
    tmp_path: Path,
) -> None:
    TokenFile(tmp_path, "agent-1", "cp:7443").store("sa.1.secret")
    assert TokenFile(tmp_path, "agent-1", "cp:7443").load() == "sa.1.secret"
    assert TokenFile(tmp_path, "agent-2", "cp:7443").load() is None
    assert TokenFile(tmp_path, "agent-1", "other:7443").load() is None


def test_an_unreadable_token_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("not json")
    assert TokenFile(tmp_path, "agent-1", "cp:7443").load() is None


def test_a_token_stored_for_a_replica_list_is_offered_while_the_list_shares_an_address(
    tmp_path: Path,
) -> None:
    # Replicas of one database share enrolment: reordering, adding or dropping one keeps it.
    TokenFile(tmp_path, "agent-1", ("a:7443", "b:7443")).store("sa.1.secret")
    assert TokenFile(tmp_path, "agent-1", ("b:7443", "a:7443")).load() == "sa.1.secret"
    assert TokenFile(tmp_path, "agent-1", ("b:7443", "c:7443")).load() == "sa.1.secret"
    assert TokenFile(tmp_path, "agent-1", "a:7443").load() == "sa.1.secret"
    assert TokenFile(tmp_path, "agent-1", ("c:7443", "d:7443")).load() is None
