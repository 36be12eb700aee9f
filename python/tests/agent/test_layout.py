"""bpf/sennet_tc.h and sennet/agent/datapath/layout.py describe the same bytes.

A C probe compiled against the header prints sizes, offsets and constants;
the test compares them with the struct layout and the Python enums.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sennet.agent.datapath import layout
from tests.conftest import REPO

FIELDS = [name for name in layout.EVENT.names or () if name != "_pad"]
KINDS = {
    "LARGE_PACKET": "SENNET_EV_LARGE_PACKET",
    "TCP_NULL": "SENNET_EV_TCP_NULL",
    "TCP_SYN_FIN": "SENNET_EV_TCP_SYN_FIN",
    "TCP_SYN_RST": "SENNET_EV_TCP_SYN_RST",
    "TCP_XMAS": "SENNET_EV_TCP_XMAS",
    "LAND": "SENNET_EV_LAND",
    "IPV4_BAD_IHL": "SENNET_EV_IPV4_BAD_IHL",
    "IPV4_BAD_LEN": "SENNET_EV_IPV4_BAD_LEN",
    "TRUNCATED_L3": "SENNET_EV_TRUNCATED_L3",
    "TRUNCATED_L4": "SENNET_EV_TRUNCATED_L4",
}


def probe(tmp_path: Path) -> dict[str, int]:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        '#include "sennet_tc.h"',
        "int main(void) {",
        '  printf("size %zu\\n", sizeof(struct sennet_event));',
        '  printf("counter %zu\\n", sizeof(struct sennet_counter));',
        '  printf("ifaces %d\\n", SENNET_MAX_IFACES);',
        '  printf("iflimit %d\\n", SENNET_IFINDEX_LIMIT);',
        '  printf("kinds %d\\n", SENNET_EV_KINDS);',
        '  printf("rx %d\\n", SENNET_DIR_RX);',
        '  printf("tx %d\\n", SENNET_DIR_TX);',
    ]
    lines += [f'  printf("off_{f} %zu\\n", offsetof(struct sennet_event, {f}));' for f in FIELDS]
    lines += [f'  printf("kind_{py} %d\\n", {c});' for py, c in KINDS.items()]
    lines += ["  return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-I", str(REPO / "bpf"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_event_layout_matches_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    assert c["size"] == layout.EVENT_SIZE == 64
    assert c["counter"] == 16
    py_fields = layout.EVENT.fields
    assert py_fields is not None
    assert {f: c[f"off_{f}"] for f in FIELDS} == {f: py_fields[f][1] for f in FIELDS}


def test_constants_match_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    assert (c["ifaces"], c["kinds"]) == (layout.MAX_IFACES, layout.EVENT_KINDS)
    assert c["iflimit"] == layout.IFINDEX_LIMIT
    assert (c["rx"], c["tx"]) == (layout.Direction.RX, layout.Direction.TX)
    assert {py: c[f"kind_{py}"] for py in KINDS} == {k.name: k.value for k in layout.EventKind}
