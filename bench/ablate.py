"""sennet_tc.bpf.c with one part of the counters-only short path taken out, for pricing parts.

Measuring, not guessing, where a program's time goes in the real receive path
needs the program without each part: the kernel's BPF statistics time whole
runs only, and this VM has no PMU for a profile. Each ablation is a text edit
of one of today's sources, built into a temporary directory with bpf/build.sh;
an edit that no longer matches its file stops the run with its name, so a change to
the program cannot silently turn an ablation into a copy of the original.
Loaded with every feature off (`features = []`), where a plain frame takes
counted_plain(), unless LOADED_WITH names the feature the part belongs to. The
objects only ever run in benchmarks: what they count is wrong by construction (a
fixed header length, a fixed slot, nothing counted, windows raced without their lock).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from sennet.common.proc import run
from sennet.testing.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
MAIN = "sennet_tc.bpf.c"
PLAIN = "plain.h"  # on_wire(), plain_frame(), counted_plain()
FLOWS = "flows.h"  # flow_account(), burst_account()

# plain_l3()'s copy of the IP header when the linear part ends before it (trafgen's frames)
COPY = (
    "\tif (len >= ETH_HDR_LEN + n && pkt_load(ctx, hook, ETH_HDR_LEN, buf, n) == 0)\n"
    "\t\treturn buf;\n"
)
# the fields plain_frame() checks, as wire.udp_frame(64) has them (IPv4, 50 bytes, UDP)
CANNED_UDP = (
    "\t{ /* ablated */\n"
    "\t\tbuf[0] = 0x45; buf[9] = PROTO_UDP;\n"
    "\t\t*(__u16 *)&buf[2] = NET16(50); *(__u16 *)&buf[6] = 0;\n"
    "\t\t*(__u32 *)&buf[12] = 1; *(__u32 *)&buf[16] = 2;\n"
    "\t\treturn buf;\n"
    "\t}\n"
)

# name -> (file in bpf/, text in it, its replacement); `(void)f;` keeps -Wunused quiet.
ABLATIONS: dict[str, tuple[str, str, str]] = {
    # the header reads and checks (plain_udp4(), and plain_frame() behind it: on trafgen's
    # non-linear frames, one bpf_skb_load_bytes of 40 bytes)
    "no_headers": (
        PLAIN,
        "\tif (__builtin_expect(plain_udp4(ctx, hook, len), 1)) {\n",
        "\tif (1) { /* ablated */\n",
    ),
    # the same helper call, but on the 14 bytes of the linear head (just read by the stack):
    # what the call itself costs, without touching the fragment; the checks then run on
    # the header of bench's 64-byte UDP frame, written into the buffer (CANNED_UDP)
    "copy_head": (
        PLAIN,
        COPY,
        "\tif (len >= ETH_HDR_LEN + n && pkt_load(ctx, hook, 0, buf, ETH_HDR_LEN) == 0)\n"
        + CANNED_UDP,
    ),
    # one byte of the fragment, then the same: what touching the frame's data costs
    "copy_frag_byte": (
        PLAIN,
        COPY,
        "\tif (len >= ETH_HDR_LEN + n && pkt_load(ctx, hook, ETH_HDR_LEN, buf, 1) == 0)\n"
        + CANNED_UDP,
    ),
    # the ifindex -> slot lookup in IFSLOTS (the slot as if it were a load-time constant)
    "no_ifslots": (
        MAIN,
        "\t__u32 slot = 0;\n\t__u32 *found = ifslot_of(&ifindex);\n\n"
        "\tif (found && *found < SENNET_MAX_IFACES)\n\t\tslot = *found;\n",
        "\t__u32 slot = 1; /* ablated */\n\t(void)ifslot_of;\n",
    ),
    # the skb's shared info (gso_segs), at the end of the data buffer, after the frame
    "no_gso_segs": (
        PLAIN,
        "\t\tif (__builtin_expect(skb->gso_segs > 1, 0))\n\t\t\treturn 0;\n",
        "\t\t/* ablated: gso_segs */\n",
    ),
    # the ifindex (skb->dev->ifindex), the IFSLOTS lookup and the per-CPU counter update
    "no_count": (
        PLAIN,
        "\t__u32 slot = count(ifindex, dir, 1, bytes);\n\n"
        "\tif (bursts)\n"
        "\t\tburst_account(slot, dir, 1, bytes, bpf_ktime_get_ns());\n",
        "\t(void)ifindex; /* ablated */\n\t(void)bytes;\n",
    ),
    # the burst windows' spin lock (what per-CPU windows would save), loaded with bursts on
    "no_burst_lock": (
        FLOWS,
        "\tbpf_spin_lock(&b->lock);\n",
        # the unlock further down becomes a no-op through a macro (one edit per ablation)
        "\t(void)b->lock; /* ablated */\n#define bpf_spin_unlock(l) ((void)(l))\n",
    ),
    # everything: the program's entry and return, the floor of any program of ours
    "nothing": (
        MAIN,
        "\t\tif (__builtin_expect(counted_plain(ctx, hook, dir, 0), 1))\n",
        "\t\tif (1 || counted_plain(ctx, hook, dir, 0)) /* ablated */\n",
    ),
}


# The feature set (bench/features.py FEATURE_SETS) an ablation is loaded with, when not
# the counters alone: a part of a feature is priced with that feature on.
LOADED_WITH: dict[str, str] = {"no_burst_lock": "bursts"}


def _edit(bpf_dir: Path, name: str) -> None:
    """Apply ablation `name` to the copy of bpf/ in `bpf_dir`."""
    file, old, new = ABLATIONS[name]
    text = (bpf_dir / file).read_text()
    if text.count(old) != 1:
        raise HarnessError(
            f"ablation {name}: its text occurs {text.count(old)} times in bpf/{file}, not "
            "once; update bench/ablate.py to the program"
        )
    (bpf_dir / file).write_text(text.replace(old, new))


@contextlib.contextmanager
def built(names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """name -> a directory holding that ablation's sennet_tc.bpf.o (all deleted afterwards)."""
    with tempfile.TemporaryDirectory(prefix="sennet-ablate-") as tmp:
        out: dict[str, Path] = {}
        for name in names:
            src = Path(tmp) / name / "bpf"
            shutil.copytree(REPO / "bpf", src)
            _edit(src, name)
            run(["sh", str(src / "build.sh"), str(Path(tmp) / name / "out")])
            out[name] = Path(tmp) / name / "out"
        yield out
