#!/bin/sh
# The test command: set up (scripts/bootstrap.sh), static checks, every test suite on
# the real kernel, then build the appliance image and boot it in QEMU for the VM tests.
# Exit status is the verdict. Extra arguments go to the host pytest run.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/bootstrap.sh"
cd "$repo"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
venv="$repo/.venv/bin"

say "ruff"
(cd python && "$venv/ruff" check --output-format concise sennet tests && "$venv/ruff" format --check -q sennet tests)
"$venv/ruff" check --output-format concise vm-tests bench scripts images
"$venv/ruff" format --check -q vm-tests bench scripts images

say "mypy"
(cd python && "$venv/mypy" sennet)
MYPYPATH=vm-tests:python "$venv/mypy" --config-file python/pyproject.toml --explicit-package-bases vm-tests

say "pytest: host suites (real kernel: BPF, TC, veth in test-owned namespaces; real gRPC, SQLite, Prometheus)"
(cd python && "$venv/python" -m pytest -q -p no:cacheprovider tests "$@")

say "image: building the appliance from the pinned inputs"
images/build

say "pytest: VM suite (boots the built image in QEMU)"
"$venv/python" -m pytest -q -p no:cacheprovider vm-tests
