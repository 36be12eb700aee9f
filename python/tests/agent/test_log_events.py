"""Every agent log line is one `event(log, "snake_case_name", ...)`, read from the source.

Operators grep and machines parse `event=<name>`; the image's boot check, the
demo and the VM tests wait for some of these names. A free sentence or a bare
`log.info(...)` would make a line nobody can match reliably, so this reads the
agent's modules and refuses both.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sennet.agent

AGENT = Path(sennet.agent.__file__).parent
NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
LEVEL_CALLS = frozenset(
    {"debug", "info", "warning", "error", "exception", "critical", "log", "basicConfig"}
)
# Names other parts of Sennet wait for in the agent's output.
WAITED_FOR = frozenset({"agent_ready", "attached", "snapshot", "heartbeat_failed", "agent_stopped"})


def calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(AGENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                found.append((f"{path.relative_to(AGENT)}:{node.lineno}", node))
    return found


def event_names() -> dict[str, str]:
    names = {}
    for where, call in calls():
        if isinstance(call.func, ast.Name) and call.func.id == "event":
            arg = call.args[1] if len(call.args) > 1 else None
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), where
            names[where] = arg.value
    return names


def test_every_agent_event_name_is_snake_case() -> None:
    names = event_names()
    assert len(names) > 20
    assert {w: n for w, n in names.items() if not NAME.fullmatch(n)} == {}


def test_no_agent_module_logs_around_event() -> None:
    direct = [
        f"{where}: {ast.unparse(call.func)}"
        for where, call in calls()
        if isinstance(call.func, ast.Attribute)
        and call.func.attr in LEVEL_CALLS
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id in ("log", "logger", "logging")
    ]
    assert direct == []


def test_the_names_other_components_wait_for_are_still_emitted() -> None:
    assert WAITED_FOR - set(event_names().values()) == set()
