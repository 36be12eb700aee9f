#!/bin/sh
# Compile the TC programs for the BPF target and stage them, with their sources
# (for the bcc loader), where the Python package finds them.
#   bpf/build.sh [OUT_DIR]   (default: python/sennet/agent/datapath/assets)
# Compile flags come from bpf/cflags (shared with bpf/BUILD.bazel and flake.nix).
# Deterministic: no timestamps or absolute paths end up in the objects
# (-fdebug-prefix-map), so two builds give the same bytes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/../python/sennet/agent/datapath/assets"}
mkdir -p "$out"
: "${CLANG:=clang}"
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
cflags=$(sed -e '/^#/d' "$here/cflags")
for src in sennet_tc bench_empty; do
    # shellcheck disable=SC2086 # $cflags is a list of flags
    "$CLANG" $cflags \
        -I"/usr/include/$multiarch" -I"$here" \
        -fdebug-prefix-map="$here"=bpf \
        -c "$here/$src.bpf.c" -o "$out/$src.bpf.o.tmp"
    mv "$out/$src.bpf.o.tmp" "$out/$src.bpf.o"
done
cp "$here/sennet_tc.bpf.c" "$here"/*.h "$out/"
# The boot-time loader (rc.boot runs it before the agent starts): user space, libbpf.
"$CLANG" $(sed -e '/^#/d' "$here/loader/cflags") -o "$out/sennet-early-attach.tmp" \
    "$here/loader/early_attach.c" -lbpf
mv "$out/sennet-early-attach.tmp" "$out/sennet-early-attach"
echo "bpf: built $(ls "$out"/*.bpf.o | wc -l) objects and sennet-early-attach in $out"
