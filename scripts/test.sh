#!/bin/sh
# The test command: set up (scripts/bootstrap.sh), static checks, every host test suite
# on the real kernel, then build the appliance image with Bazel from its pinned inputs
# and boot it in QEMU for the image and VM suites. Exit status is the verdict.
# Extra arguments go to the host pytest run.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/bootstrap.sh"
cd "$repo"
say() { printf '\033[1m==> %s (%s)\033[0m\n' "$*" "$(date +%H:%M:%S)"; }
venv="$repo/.venv/bin"
# --durations: the slowest tests named in every log, to keep the suite inside its time.
pytest() { "$venv/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"; }

say "ruff"
(cd python && "$venv/ruff" check --output-format concise sennet tests && "$venv/ruff" format --check -q sennet tests)
"$venv/ruff" check --output-format concise vm-tests bench scripts images
"$venv/ruff" format --check -q vm-tests bench scripts images

say "mypy"
(cd python && "$venv/mypy" sennet tests)
MYPYPATH=vm-tests:python:images:bench:scripts "$venv/mypy" --config-file python/pyproject.toml \
    --explicit-package-bases vm-tests bench scripts
(cd images && "$venv/mypy" --strict sennet_image)

say "proto bindings match proto/"
(cd python && "$venv/python" -m sennet.proto.generate --check)

say "pytest: agent and control plane (real kernel: BPF, TC, veth in test-owned namespaces; real gRPC, SQLite, Prometheus)"
# Two workers, each module on one of them (its module-scoped control plane or loaded programs
# set up once): most of the suite waits on processes, sockets and the kernel, not the CPU.
(cd python && pytest -n 2 --dist loadfile tests "$@")

say "pytest: image build tooling"
(cd images && pytest tests -m "not integration")

say "bazel build //images:appliance (pinned inputs, sandboxed)"
bazel build //images:appliance
export SENNET_IMAGE_DIR="$repo/bazel-bin/images"

say "pytest: image boots (direct kernel and UEFI), the pinned build root"
(cd images && pytest tests -m "integration and not kit")

say "air-gap kit; images/check-reproducible: rebuilt offline from the kit, byte for byte against Bazel's"
(cd images && pytest tests -m kit)

say "pytest: VM suite (the test variant in QEMU: counters, events, heartbeats, faults)"
pytest vm-tests
