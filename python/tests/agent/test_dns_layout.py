"""bpf/sennet_dns.h and sennet/agent/datapath/dns_layout.py describe the same bytes.

A C probe compiled against the header prints every slot, size and offset; the
test compares them with the Python enum and struct layouts the agent reads with.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sennet.agent.datapath import dns_layout as dl
from sennet.agent.datapath import layout
from sennet.agent.datapath.record import Layout
from tests.conftest import REPO

SLOT_MACROS = {s.name: f"SENNET_DNS_{s.name}" for s in dl.DnsSlot}
STRUCTS = {
    "pending_key": ("struct sennet_dns_pending_key", dl.PENDING_KEY),
    "pending": ("struct sennet_dns_pending", dl.PENDING),
    "name_count": ("struct sennet_dns_name_count", dl.NAME_COUNT),
}


def _fields(dtype: Layout) -> list[str]:
    return [n for n in dtype.names or () if not n.startswith("_")]


def probe(tmp_path: Path) -> dict[str, int]:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <linux/types.h>",
        '#include "sennet_tc.h"',
        '#include "sennet_dns.h"',
        "int main(void) {",
        '  printf("counters %d\\n", SENNET_DNS_COUNTERS);',
        '  printf("pending_entries %d\\n", SENNET_DNS_PENDING_ENTRIES);',
        '  printf("name_entries %d\\n", SENNET_DNS_NAME_ENTRIES);',
        '  printf("name_max %d\\n", SENNET_DNS_NAME_MAX);',
        '  printf("name_size %zu\\n", sizeof(struct sennet_dns_name));',
        '  printf("port %d\\n", SENNET_DNS_PORT);',
        '  printf("hist %d\\n", SENNET_HIST_DNS_LATENCY);',
    ]
    lines += [f'  printf("slot_{py} %d\\n", {c});' for py, c in SLOT_MACROS.items()]
    for short, (ctype, dtype) in STRUCTS.items():
        lines.append(f'  printf("size_{short} %zu\\n", sizeof({ctype}));')
        lines += [
            f'  printf("off_{short}_{f} %zu\\n", offsetof({ctype}, {f}));' for f in _fields(dtype)
        ]
    lines += ["  return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "probe"
    subprocess.run(["gcc", "-I", str(REPO / "bpf"), "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_dns_counter_slots_and_table_sizes_match_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    assert {py: c[f"slot_{py}"] for py in SLOT_MACROS} == {s.name: s.value for s in dl.DnsSlot}
    assert c["counters"] == dl.COUNTER_SLOTS
    assert (c["pending_entries"], c["name_entries"]) == (dl.PENDING_ENTRIES, dl.NAME_ENTRIES)
    assert c["name_max"] == c["name_size"] == dl.NAME_MAX
    assert c["port"] == 53
    assert c["hist"] == layout.Histogram.DNS_LATENCY


def test_dns_table_records_match_the_c_header(tmp_path: Path) -> None:
    c = probe(tmp_path)
    for short, (_ctype, dtype) in STRUCTS.items():
        assert c[f"size_{short}"] == dtype.itemsize, short
        fields = dtype.fields
        assert fields is not None
        assert {f: c[f"off_{short}_{f}"] for f in _fields(dtype)} == {
            f: fields[f][1] for f in _fields(dtype)
        }, short


def test_pinned_dns_maps_are_declared_with_their_shapes() -> None:
    for name in (dl.MAP_DNS_COUNTERS, dl.MAP_DNS_PENDING, dl.MAP_DNS_NAMES, layout.MAP_HISTOGRAMS):
        assert name in layout.PINNED_MAPS
        assert name in layout.MAP_SPECS
    assert layout.MAP_SPECS[dl.MAP_DNS_NAMES][1:] == (256, 16, dl.NAME_ENTRIES)
    assert layout.MAP_SPECS[dl.MAP_DNS_PENDING][1:] == (24, 16, dl.PENDING_ENTRIES)
