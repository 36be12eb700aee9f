"""Generated agent settings (TOML files and SENNET_* variables): a config or one clear error.

Whatever an operator or a provisioning step writes, the agent either starts
with a valid configuration or stops with a `UserError` naming where the bad
value came from: never a traceback from deep inside (a TypeError on a list
where a number was expected, a ValueError from a parser). On a failure
hypothesis prints the smallest failing input and a `@reproduce_failure` blob.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sennet.agent import config
from sennet.common.errors import UserError

FUZZ = settings(
    max_examples=800,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
KEYS = st.sampled_from([s.name for s in config.SETTINGS]) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20
)
TEXT = st.text(max_size=30)
VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=5,
)


def toml_value(value: Any) -> str:
    """TOML for a generated value (None becomes a string: TOML has no null)."""
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).encode("unicode_escape").decode().replace('"', '\\"') + '"'


def judged(build: Any) -> None:
    """Either a configuration or a UserError whose message names the source."""
    try:
        cfg = build()
    except UserError as exc:
        assert exc.message, "an empty error message"
        return
    assert isinstance(cfg, config.AgentConfig)


@FUZZ
@given(doc=st.dictionaries(KEYS, VALUES, max_size=6), noise=st.binary(max_size=40))
def test_a_generated_config_file_is_a_config_or_one_clear_error(
    tmp_path_factory: Any, doc: dict[str, Any], noise: bytes
) -> None:
    path: Path = tmp_path_factory.mktemp("cfg") / "agent.toml"
    text = "".join(f"{key} = {toml_value(value)}\n" for key, value in doc.items())
    try:
        tomllib.loads(text)
        path.write_bytes(text.encode())
    except tomllib.TOMLDecodeError:
        path.write_bytes(noise)  # not TOML at all: the loader must say so, naming the file
    judged(lambda: config.build(path, {"SENNET_INTERFACES": "eth1"}))


@FUZZ
@given(env=st.dictionaries(KEYS.map(lambda k: "SENNET_" + k.upper()), TEXT, max_size=6))
def test_generated_environment_variables_are_a_config_or_one_clear_error(
    env: dict[str, str],
) -> None:
    judged(lambda: config.build(None, {"SENNET_INTERFACES": "eth1", **env}))
