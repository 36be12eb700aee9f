#!/bin/sh
# The test command: set up (scripts/bootstrap.sh), static checks, then every test suite
# on the real kernel (and, when the image is built, in QEMU). Exit status is the verdict.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/bootstrap.sh"
cd "$repo/python"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
say "ruff"
../.venv/bin/ruff check --output-format concise sennet tests ../bench
../.venv/bin/ruff format --check -q sennet tests ../bench
say "mypy"
../.venv/bin/mypy sennet
say "pytest (real kernel: BPF, TC, veth in test-owned namespaces)"
../.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
