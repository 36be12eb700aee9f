#!/bin/sh
# Install everything Sennet's build, main job and tests need on Debian 12, idempotently:
# Debian packages (scripts/apt-packages.txt), kernel headers for the bcc loader, a
# Python venv with the package and its pinned dependencies, and the BPF objects.
# The protobuf bindings are committed; the tests check they match proto/.
# Package sources come from this machine's apt and pip settings (point those at a
# mirror for an air-gapped site); nothing here names a registry.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: run as root (apt, BPF, network namespaces)" >&2
    exit 2
fi

pkgs=$(grep -v '^[[:space:]]*#' scripts/apt-packages.txt | tr -s ' \n' ' ')
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "apt: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    say "apt: all $(echo "$pkgs" | wc -w) packages present"
fi

# bcc compiles against kernel headers. Debian has none for a non-Debian kernel (e.g. a
# cloud VM's); its 6.1 headers work for TC programs, so link them if nothing is there.
build="/lib/modules/$(uname -r)/build"
if [ ! -e "$build" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$hdr" ]; then
        say "bcc: linking $hdr as $build"
        mkdir -p "/lib/modules/$(uname -r)"
        ln -sfn "$hdr" "$build"
        ln -sfn "${hdr%-amd64}-common" "/lib/modules/$(uname -r)/source"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    say "python: creating .venv (Debian python3 + system site packages, for bcc)"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
say "python: installing sennet, the image tooling and pinned dependencies"
# No pipe into a filter here: sh has no pipefail, so a failed install would be masked by the
# filter's status. pip's output goes to a file; on failure all of it is shown and we stop.
piplog=$(mktemp)
if ! .venv/bin/pip install -q --disable-pip-version-check -c python/constraints.txt \
        -e 'python[test]' -e images >"$piplog" 2>&1; then
    cat "$piplog" >&2
    rm -f "$piplog"
    echo "bootstrap: pip install failed (its output is above)" >&2
    exit 1
fi
grep -v "is ignored: it is neither a file nor a directory" "$piplog" || true
rm -f "$piplog"
.venv/bin/python -c "import sennet.agent.cli, sennet_image.cli" >/dev/null

say "bpf: compiling TC programs"
bpf/build.sh
