"""`sennet-agent` exits by the shared rule: one line and 2 for what the operator can fix."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from sennet.agent import cli
from sennet.common.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR


def failing(exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def command(_args: argparse.Namespace) -> int:
        raise exc

    return command


def test_no_permission_is_one_line_saying_root_is_needed_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    denied = PermissionError(1, "Operation not permitted", "/sys/fs/bpf/sennet")
    monkeypatch.setitem(cli.COMMANDS, "reset", failing(denied))
    assert cli.main(["reset"]) == EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == (
        "sennet-agent: error: [Errno 1] Operation not permitted: '/sys/fs/bpf/sennet' "
        "(BPF and TC need root)\n"
    )


def test_ctrl_c_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "reset", failing(KeyboardInterrupt()))
    assert cli.main(["reset"]) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == ""


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "reset", failing(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["reset"])
