#!/usr/bin/env python3
"""Benchmark the image build: clean build, rebuild after a one-line agent change, sizes.

Runs in a copy of the source tree (so the shared work tree is never edited)
with its own Bazel output base; the repository cache is shared, so "clean"
means every action runs but pinned inputs are not downloaded again (as on a
CI machine with a warm cache). The rebuild appends one line to the agent's
sennet/agent/__init__.py and lists which genrules ran again: the goal is only
the agent layer and the disks.

    python3 bench/image_build.py [--json] [--skip-sizes]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sennet.testing.figures import Figure, report

REPO = Path(__file__).resolve().parent.parent
EXCLUDE = {".git", ".venv", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}


def _copy_tree(dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO  # only the top-level build/ (images/build is a script)
        return {
            n for n in names if (n in EXCLUDE and (n != "build" or top)) or n.startswith("bazel-")
        }

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def _bazel(src: Path, base: Path, *args: str) -> tuple[float, str]:
    start = time.monotonic()
    res = subprocess.run(
        ["bazel", f"--output_base={base}", *args],
        cwd=src,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - start
    if res.returncode != 0:
        sys.exit(f"error: bazel {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return elapsed, res.stderr


def _ran(log: str) -> list[str]:
    """Genrules Bazel executed, from the `SUBCOMMAND: ... [action 'Executing genrule
    //pkg:name', ...]` lines of --subcommands (actions print nothing else on success)."""
    return sorted(set(re.findall(r"Executing genrule (//[\w/]+:[\w.-]+)", log)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="one JSON object per figure")
    p.add_argument("--skip-sizes", action="store_true", help="skip the xz size measurement")
    args = p.parse_args(argv)
    figures: list[Figure] = []
    # Not under /tmp: the sandbox mounts a private tmpfs there (.bazelrc).
    (REPO / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sennet-bench-", dir=REPO / "build") as tmp:
        src, base = Path(tmp) / "src", Path(tmp) / "base"
        _copy_tree(src)
        clean_s, _ = _bazel(src, base, "build", "//images:appliance")
        figures.append(
            Figure("clean_build", round(clean_s, 1), "s", "every action; repository cache warm")
        )
        init = src / "python/sennet/agent/__init__.py"
        init.write_text(init.read_text() + "# bench: one-line agent change\n")
        rebuild_s, log = _bazel(src, base, "build", "--subcommands", "//images:appliance")
        figures.append(
            Figure(
                "rebuild_after_agent_change",
                round(rebuild_s, 1),
                "s",
                "goal 30 s; reran " + " ".join(_ran(log)),
            )
        )
        bin_dir = (
            Path(
                subprocess.run(
                    ["bazel", f"--output_base={base}", "info", "bazel-bin"],
                    cwd=src,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
            )
            / "images"
        )
        for name in (
            "appliance.raw",
            "appliance.qcow2",
            "root.squashfs",
            "agent.squashfs",
            "uki-a.efi",
        ):
            figures.append(
                Figure(f"size_{name}", round((bin_dir / name).stat().st_size / 2**20, 1), "MiB")
            )
        if not args.skip_sizes:
            xz = subprocess.run(
                ["xz", "-T0", "-6", "-c", str(bin_dir / "appliance.raw")],
                capture_output=True,
                check=True,
            ).stdout
            figures.append(
                Figure(
                    "size_appliance.raw.xz",
                    round(len(xz) / 2**20, 1),
                    "MiB",
                    "compressed raw disk; goal 48, limit 80",
                )
            )
        subprocess.run(
            ["bazel", f"--output_base={base}", "shutdown"],
            cwd=src,
            check=False,
            capture_output=True,
        )
    print(report(figures, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
