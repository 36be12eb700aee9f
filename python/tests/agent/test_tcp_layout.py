"""The TCP health layouts in bpf/sennet_tc.h and layout.py describe the same bytes.

A C probe compiled against the header prints the sizes and offsets of the
handshake key and value and the TCP_COUNTERS slot numbers; they must match
the struct layouts and the Python enum the agent reads the maps with.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sennet.agent.datapath import layout
from sennet.agent.datapath.record import Layout
from tests.conftest import REPO

STRUCTS = {"sennet_hs_key": layout.HS_KEY, "sennet_hs": layout.HS}
SLOTS = {
    "RST_RX": "SENNET_TCP_RST_RX",
    "RST_TX": "SENNET_TCP_RST_TX",
    "RETRANS": "SENNET_TCP_RETRANS",
    "ZERO_WINDOW": "SENNET_TCP_ZERO_WINDOW",
    "UNANSWERED": "SENNET_TCP_UNANSWERED",
    "MALFORMED": "SENNET_TCP_MALFORMED",
    "SYN_RETRIED": "SENNET_TCP_SYN_RETRIED",
}
CONSTANTS = {
    "SENNET_TCP_SLOTS": layout.TCP_SLOTS,
    "SENNET_TCP_HANDSHAKES": layout.TCP_HANDSHAKES,
    "SENNET_HS_SYN_RETRIED": layout.HS_SYN_RETRIED,
    "SENNET_HS_SYNACK_RETRIED": layout.HS_SYNACK_RETRIED,
}


def _fields(dtype: Layout) -> list[str]:
    return [n for n in dtype.names or () if n != "_pad"]


def probe(tmp_path: Path) -> dict[str, int]:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        '#include "sennet_tc.h"',
        "int main(void) {",
    ]
    for struct, dtype in STRUCTS.items():
        lines.append(f'  printf("size_{struct} %zu\\n", sizeof(struct {struct}));')
        lines += [
            f'  printf("off_{struct}_{f} %zu\\n", offsetof(struct {struct}, {f}));'
            for f in _fields(dtype)
        ]
    lines += [f'  printf("{c} %d\\n", {c});' for c in (*SLOTS.values(), *CONSTANTS)]
    lines += ["  return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-I", str(REPO / "bpf"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_handshake_key_and_value_match_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    for struct, dtype in STRUCTS.items():
        assert c[f"size_{struct}"] == dtype.itemsize, struct
        fields = dtype.fields
        assert fields is not None
        offsets = {f: c[f"off_{struct}_{f}"] for f in _fields(dtype)}
        assert offsets == {f: fields[f][1] for f in _fields(dtype)}, struct


def test_tcp_counter_slots_and_sizes_match_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    assert {py: c[name] for py, name in SLOTS.items()} == {
        s.name: s.value for s in layout.TcpCounter
    }
    assert {name: c[name] for name in CONSTANTS} == CONSTANTS
    assert max(layout.TcpCounter) < layout.TCP_SLOTS
