"""Command-line entry: each subcommand is one build step (Bazel genrules call them one by one)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sennet_image.proc import BuildError

REPO = Path(__file__).resolve().parent.parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sennet_image", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lu = sub.add_parser("lock-update", help="resolve current versions, rewrite locks and deps.bzl")
    lu.add_argument("--refresh", action="store_true", help="apt-get update (signed index) first")
    lu.add_argument("--check", action="store_true", help="only report; exit 1 if pins would move")
    lu.add_argument("--only-if-gone", action="store_true",
                    help="CI: rewrite only if a pinned package left the registry, loudly")
    b = sub.add_parser("build", help="build every artefact without Bazel (fetches pinned inputs)")
    b.add_argument("--out", type=Path, default=REPO / "build" / "image")
    return p


def main(argv: list[str]) -> int:
    """Parse arguments and run one step; an operator error prints one line and exits 1."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "lock-update":
            from sennet_image import lockupdate

            return lockupdate.update(refresh=args.refresh, check=args.check,
                                     only_if_gone=args.only_if_gone)
        if args.command == "build":
            from sennet_image import build

            build.build_all(args.out.resolve())
            return 0
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2
