"""The same image layout from nixpkgs parts (what flake.nix's packages.appliance runs).

Nix hands over store paths instead of debs and wheels: a Python environment
with the agent's dependencies, static busybox, libbpf, the kernel. The root
holds their closure under /nix/store plus the same overlay (init scripts,
agent.toml) and the FHS links the overlay expects (/usr/bin/python3,
/bin/busybox). The agent layer, initramfs, UKI and disk are built by the very
same functions as the Debian-based build.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sennet_image import build, disk, initramfs, kmods, rootfs, slots, verity
from sennet_image.fsutil import prune_empty_dirs


def root_tree(
    tree: Path, store_paths: list[Path], python_env: Path, busybox: Path, libbpf: Path
) -> None:
    """/nix/store closure + overlay + FHS links."""
    tree.mkdir(parents=True)
    for d in ("bin", "sbin", "lib", "lib64"):
        (tree / "usr" / d).mkdir(parents=True, exist_ok=True)
        (tree / d).symlink_to(f"usr/{d}")
    for sp in sorted(store_paths):
        shutil.copytree(sp, tree / str(sp).lstrip("/"), symlinks=True)
    (tree / "usr/bin/busybox").symlink_to(f"{busybox}/bin/busybox")
    for applet in rootfs.APPLETS:
        where = tree / ("usr/sbin" if applet in rootfs.SBIN_APPLETS else "usr/bin") / applet
        where.symlink_to("/usr/bin/busybox")
    # libbpf is loaded with ctypes by soname; nix's loader has no /etc/ld.so.cache to find it.
    (tree / "usr/bin/python3").write_text(
        f'#!/usr/bin/sh\nLD_LIBRARY_PATH={libbpf}/lib exec {python_env}/bin/python3 "$@"\n'
    )
    (tree / "usr/bin/python3").chmod(0o755)
    for sub in ("etc", "usr"):
        shutil.copytree(rootfs.OVERLAY / sub, tree / sub, dirs_exist_ok=True, symlinks=True)
    site = Path(f"{python_env}/lib/python3.11/site-packages")
    pth_dir = tree / str(site).lstrip("/")
    if pth_dir.is_dir():
        pth_dir.chmod(0o755)
        shutil.copy(rootfs.OVERLAY / "sennet-agent.pth", pth_dir / "sennet-agent.pth")
    (tree / "root").symlink_to("/run/root")
    (tree / "etc/resolv.conf").symlink_to("/run/resolv.conf")
    (tree / "usr/lib/os-release").write_text(rootfs.os_release())
    prune_empty_dirs(tree)
    rootfs.make_mount_points(tree)


def image(
    *,
    closure: Path,
    python_env: Path,
    busybox: Path,
    libbpf: Path,
    kernel: Path,
    python_src: Path,
    bpf_objects: list[Path],
    out: Path,
) -> None:
    """All artefacts of the production variant into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    store_paths = [Path(p) for p in closure.read_text().split()]
    modules = next((kernel / "lib/modules").iterdir())
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tree = Path(tmp) / "root"
        root_tree(tree, store_paths, python_env, busybox, libbpf)
        kmods.write_usb_storage(modules, modules.name, tree)
        build.verity_layer(tree, out / "root.squashfs", out / "root.roothash")
    build.agent_layer(python_src, bpf_objects, out / "agent.squashfs", out / "agent.roothash")
    hashes = {r: verity.read_root_hash(out / f"{r}.roothash") for r in verity.ROLES}
    # dmsetup is not yet taken from nixpkgs (lvm2) for this initramfs: never built here.
    base = f"{disk.DEFAULT_CMDLINE} {verity.cmdline_args(hashes)}"
    root, agent = out / "root.squashfs", out / "agent.squashfs"
    initramfs.build_from_tree(
        kernel / "bzImage",
        modules,
        busybox / "bin/busybox",
        {out / "initrd.img": disk.partition_table(disk.layout("production"))},
        out / "vmlinuz",
    )
    ident = slots.identity(root, agent)
    build.write_identity(ident, out / "image.json")
    (out / "cmdline").write_text(ident.cmdline(base, "a") + "\n")
    for slot in slots.SLOTS:
        disk.build_uki(
            out / "vmlinuz",
            out / "initrd.img",
            ident.cmdline(base, slot),
            slots.osrel(rootfs.os_release(), ident.version),
            out / build.uki_name("production", slot),
        )
    build.disks(
        out / "uki-a.efi",
        out / "image.json",
        (root, agent, None),
        out / "appliance.raw",
        out / "appliance.qcow2",
    )
