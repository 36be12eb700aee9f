"""Build twice from clean and compare: the reproducibility check.

Both builds use one snapshot of the source tree (copied first, so edits made
meanwhile in the work tree cannot leak into one build and not the other).
Each build gets a fresh Bazel output base (nothing reused but the repository
cache, which holds only sha256-verified downloads), or with --plain a fresh
output directory of the build without Bazel (sharing build/cache, the
sha256-keyed download cache, and nothing else: its build root is unpacked
again). Prints the sha256 of every artefact from both builds; on a difference
names the file and shows what differs inside it (diffoscope).

`--against DIR` (the test command's form) takes an existing build as the first
(`bazel-bin/images`, just built by Bazel) and makes only the second: a build
without Bazel from the snapshot. So one extra build checks both that a clean
build repeats and that the two build paths agree; manifest.json is left out of
that comparison, since it names which builder made it.

The air-gap kit's check adds `--source source.tar --distdir DIR --offline`: the
second build starts from the kit's `git archive` (a fresh clone's files, nothing
else), takes every pinned input from the kit's flat distdir, and runs in a new
network namespace holding only a loopback interface, so nothing can be fetched.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from sennet.common.errors import EXIT_FAILED, EXIT_OK

from sennet_image import build
from sennet_image.fsutil import sha256_file
from sennet_image.proc import log, run

REPO = Path(__file__).resolve().parent.parent.parent
# Layers first: when one differs, the disks holding it differ too, and diffoscope on
# a layer says more (and runs faster) than on a 140 MiB disk.
LAYERS = (
    "root.squashfs",
    "agent.squashfs",
    "test.squashfs",
    "initrd.img",
    "initrd-test.img",
    "vmlinuz",
    "uki-a.efi",
    "uki-b.efi",
    "uki-test-a.efi",
    "uki-test-b.efi",
    "image.json",
    "root.files",
    "cmdline",
)
ARTEFACTS = (*build.ARTEFACTS, "manifest.json")


def snapshot(dest: Path) -> Path:
    """Copy the source tree (no .git, build outputs, venv) to `dest`."""
    skip = {".git", ".venv", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO  # only the top-level build/ (images/build is a script)
        return {n for n in names if (n in skip and (n != "build" or top)) or n.startswith("bazel-")}

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def bazel_build(src: Path, output_base: Path, dest: Path) -> float:
    """One clean `bazel build //images:appliance` in its own output base; copy artefacts."""
    start = time.monotonic()
    run(
        ["bazel", f"--output_base={output_base}", "build", "//images:appliance"],
        cwd=src,
        env={"HOME": str(Path.home())},
        capture=False,
    )
    bin_dir = Path(
        run(
            ["bazel", f"--output_base={output_base}", "info", "bazel-bin"],
            cwd=src,
            env={"HOME": str(Path.home())},
        )
        .stdout.decode()
        .strip()
    )
    dest.mkdir(parents=True)
    for name in ARTEFACTS:
        shutil.copyfile(bin_dir / "images" / name, dest / name)
    run(
        ["bazel", f"--output_base={output_base}", "shutdown"],
        cwd=src,
        env={"HOME": str(Path.home())},
    )
    return time.monotonic() - start


def unpack(tarball: Path, dest: Path) -> Path:
    """A source tree from a `git archive` tarball (the kit's source.tar)."""
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(dest)  # our own `git archive`: regular files and dirs only
    return dest


def plain_build(src: Path, dest: Path, distdir: Path | None = None, offline: bool = False) -> float:
    """One build without Bazel (the snapshot's own images/build) into an empty directory:
    pinned inputs from `distdir` if given, else through the download cache build/cache;
    `offline`, in a network namespace of its own with only `lo`."""
    start = time.monotonic()
    cache = REPO / "build" / "cache"
    if distdir is None and cache.is_dir() and not (src / "build" / "cache").exists():
        (src / "build").mkdir(exist_ok=True)
        (src / "build" / "cache").symlink_to(cache)
    argv: list[str | Path] = [src / "images" / "build", "--out", dest]
    if offline:
        argv = ["unshare", "--net", "--", *argv]
    env = {"SENNET_DISTDIR": str(distdir)} if distdir else None
    run(argv, capture=False, env=env, host=True)
    return time.monotonic() - start


def compare(a: Path, b: Path, names: tuple[str, ...] = ARTEFACTS) -> list[str]:
    """Print both hashes per artefact; return the names that differ."""
    differ = []
    print(f"{'artefact':<22} {'build 1 sha256':<64}  {'build 2 sha256':<64}")
    for name in names:
        ha, hb = sha256_file(a / name), sha256_file(b / name)
        mark = "" if ha == hb else "  DIFFERS"
        print(f"{name:<22} {ha}  {hb}{mark}")
        if ha != hb:
            differ.append(name)
    return differ


def explain(a: Path, b: Path, name: str) -> None:
    """Show what differs inside one artefact (diffoscope understands squashfs, cpio, gzip)."""
    print(f"--- {name} differs; diffoscope:")
    res = run(
        ["diffoscope", "--text", "-", "--max-report-size", "200000", a / name, b / name],
        check=False,
    )
    print(res.stdout.decode(errors="replace")[:20000])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The reproducibility check's flags (`sennet_image repro`)."""
    p.add_argument("--plain", action="store_true", help="the build without Bazel, not Bazel's")
    p.add_argument("--keep", type=Path, help="keep both builds' artefacts under this directory")
    p.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="an existing build (e.g. bazel-bin/images) as build 1; only build 2 runs (plain)",
    )
    p.add_argument("--source", type=Path, help="build from this `git archive` tarball instead")
    p.add_argument("--distdir", type=Path, help="pinned inputs from this flat directory only")
    p.add_argument("--offline", action="store_true", help="build in a netns with only lo")


def main(args: argparse.Namespace) -> int:
    """Two clean builds, compared; exit 1 on any difference."""
    # build/ is ignored by git, so a fresh clone has none: make it (the scratch space
    # lives in the work tree, beside the sources, not in a small /tmp).
    scratch = REPO / "build"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sennet-repro-", dir=scratch) as tmp:
        root = args.keep or Path(tmp)
        src = (
            unpack(args.source.resolve(), Path(tmp) / "src")
            if args.source
            else snapshot(Path(tmp) / "src")
        )
        distdir = args.distdir.resolve() if args.distdir else None
        times = []
        first = args.against.resolve() if args.against else root / "build1"
        for i in (1, 2) if args.against is None else (2,):
            log("repro_build", n=i, kind="plain" if args.plain or args.against else "bazel")
            dest = root / f"build{i}"
            shutil.rmtree(dest, ignore_errors=True)
            if args.plain or args.against:
                times.append(plain_build(src, dest, distdir, args.offline))
            else:
                times.append(bazel_build(src, Path(tmp) / f"output_base{i}", dest))
        names = build.ARTEFACTS if args.against else ARTEFACTS
        differ = compare(first, root / "build2", names)
        inner = [n for n in LAYERS if n in differ]
        for name in inner or differ:
            explain(first, root / "build2", name)
        for i in (1, 2):
            if not args.plain:
                shutil.rmtree(Path(tmp) / f"output_base{i}", ignore_errors=True)
    print("build times: " + ", ".join(f"{t:.0f} s" for t in times))
    print(
        "REPRODUCIBLE: all artefacts byte-identical"
        if not differ
        else f"NOT REPRODUCIBLE: {', '.join(differ)}"
    )
    return EXIT_OK if not differ else EXIT_FAILED
