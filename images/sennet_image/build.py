"""The build steps, each a function of declared input files to output files.

Bazel runs them one genrule each (see images/BUILD.bazel), so a change to the
agent re-runs only `agent_layer` and `disks`; `build_all` runs them in order
for a build without Bazel.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sennet_image import disk, initramfs, lock, rootfs, signing, verity
from sennet_image.fetch import fetch
from sennet_image.manifest import bpf_sources
from sennet_image.manifest import write as write_manifest
from sennet_image.proc import log, run, step

REPO = Path(__file__).resolve().parent.parent.parent


# Every file a build leaves in its output directory besides manifest.json (which lists them).
ARTEFACTS = (
    "appliance.raw",
    "appliance.qcow2",
    "appliance-test.raw",
    "appliance-test.qcow2",
    "vmlinuz",
    "initrd.img",
    "initrd-test.img",
    "cmdline",
    "BOOTX64.EFI",
    "BOOTX64-test.EFI",
    "root.squashfs",
    "root.roothash",
    "agent.squashfs",
    "agent.roothash",
    "test.squashfs",
    "root.files",
)


@dataclass(frozen=True)
class Disks:
    """The disk artefacts of one variant."""

    raw: Path
    qcow2: Path


def verity_layer(tree: Path, out: Path, roothash_out: Path) -> None:
    """squashfs of `tree` with its dm-verity hash tree appended; the root hash beside it."""
    rootfs.mksquashfs(tree, out)
    with step("verity", out=out.name):
        roothash_out.write_text(verity.format_layer(out) + "\n")


def base_layer(
    debs: list[Path], wheels: list[Path], out: Path, files_out: Path, roothash_out: Path
) -> None:
    """Root debs + wheels + overlay -> root.squashfs (+ verity tree), its root hash, file list."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "root"
        files = rootfs.build_base(tree, sorted(debs, key=lambda p: p.name), sorted(wheels))
        verity_layer(tree, out, roothash_out)
    files_out.write_text("\n".join(files) + "\n")


def agent_layer(python_src: Path, bpf_objects: list[Path], out: Path, roothash_out: Path) -> None:
    """python/sennet + BPF objects -> agent.squashfs (+ verity tree; mounted at /opt/sennet)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "agent"
        rootfs.build_agent(tree, python_src, sorted(bpf_objects))
        verity_layer(tree, out, roothash_out)


def test_layer(debs: list[Path], out: Path) -> None:
    """Test-only extras (dropbear) -> test.squashfs (mounted at /opt/sennet-test)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "test"
        rootfs.build_testfs(tree, sorted(debs, key=lambda p: p.name))
        rootfs.mksquashfs(tree, out)


# Per variant: its initramfs and UKI (they differ only in the partition GUIDs they mount).
BOOT_NAMES = {
    "production": ("initrd.img", "BOOTX64.EFI"),
    "test": ("initrd-test.img", "BOOTX64-test.EFI"),
}


def boot_files(
    kernel_deb: Path,
    busybox_deb: Path,
    lib_debs: list[Path],
    outdir: Path,
    cmdline: str,
    layers: tuple[Path, Path, Path],
    root_hashes: tuple[Path, Path],
) -> None:
    """Kernel, command line, and per variant an initramfs and the signed UKI (BOOTX64*.EFI)
    from them; `layers` (root, agent, test squashfs) fix the partition GUIDs each one mounts,
    `root_hashes` (root, agent) go on the command line; `lib_debs` hold dmsetup and its
    libraries for the initramfs."""
    root, agent, test = layers
    hashes = dict(zip(verity.ROLES, map(verity.read_root_hash, root_hashes), strict=True))
    cmdline = f"{cmdline} {verity.cmdline_args(hashes)}"
    tables = {
        outdir / BOOT_NAMES[v][0]: disk.partition_table(
            disk.layout(v, root, agent, test if v == "test" else None)
        )
        for v in disk.VARIANTS
    }
    with step("initramfs"):
        release = initramfs.build(kernel_deb, busybox_deb, lib_debs, tables, outdir / "vmlinuz")
    (outdir / "cmdline").write_text(cmdline + "\n")
    (outdir / "kernel-release").write_text(release + "\n")
    with step("uki"):
        for initrd, uki in BOOT_NAMES.values():
            disk.build_uki(
                outdir / "vmlinuz", outdir / initrd, cmdline, rootfs.os_release(), outdir / uki
            )
    with step("sign", key=signing.signing_key().source):
        for _initrd, uki in BOOT_NAMES.values():
            signing.sign(outdir / uki)


def disks(uki: Path, root: Path, agent: Path, test: Path | None, raw: Path, qcow2: Path) -> None:
    """GPT disk: ESP, root, agent layer, [test layer], state (zeroed; formatted on first boot),
    each with the GUID its variant's initramfs looks for (disk.layout)."""
    ids = disk.layout("test" if test is not None else "production", root, agent, test)
    with tempfile.TemporaryDirectory(dir=raw.parent) as tmp:
        esp = Path(tmp) / "esp.img"
        with step("esp"):
            disk.build_esp(uki, esp)
        contents = {
            "esp": (disk.ESP_TYPE, esp, disk.ESP_MIB),
            "root": (disk.ROOT_TYPE, root, disk.size_mib(root, 4)),
            # slack so an agent change keeps the root partition at the same offset
            "agent": (disk.DATA_TYPE, agent, disk.size_mib(agent, 2)),
            "state": (disk.DATA_TYPE, None, disk.STATE_MIB),
        }
        if test is not None:
            contents["test"] = (disk.DATA_TYPE, test, disk.size_mib(test, 1))
        parts = [
            disk.Partition(disk.PARTITION_NAMES[r], t, c, mib, ids[r])
            for r in disk.ROLES
            if r in contents
            for t, c, mib in [contents[r]]
        ]
        disk.build_disk(parts, raw)
    with step("qcow2", out=qcow2.name):
        disk.to_qcow2(raw, qcow2)


def bpf_objects(outdir: Path) -> list[Path]:
    """Compile the BPF programs exactly as bpf/build.sh does (the plain build's path)."""
    run([REPO / "bpf" / "build.sh", outdir])
    return sorted(outdir.glob("*.bpf.o"))


def build_all(out: Path) -> dict[str, Path]:
    """Everything, without Bazel: fetch pinned inputs, run each step, write the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    debs, wheels = lock.load_debs(), lock.load_wheels()
    with step("fetch", inputs=len(debs) + len(wheels)):
        paths = {p.name: fetch(p) for p in debs}
        wheel_paths = [fetch(w) for w in wheels]
    root_debs = [paths[d.name] for d in debs if d.set == "root"]
    lib_debs = [paths[d.name] for d in debs if d.set in ("root", "test", "initramfs")]
    test_debs = [paths[d.name] for d in debs if d.set == "test"]
    kernel = paths[lock.kernel_pin(debs).name]
    busybox = paths[lock.busybox_pin(debs).name]
    with tempfile.TemporaryDirectory() as tmp:
        with step("bpf"):
            objs = bpf_objects(Path(tmp) / "bpf")
        with step("base_layer"):
            layer, files = out / "root.squashfs", out / "root.files"
            base_layer(root_debs, wheel_paths, layer, files, out / "root.roothash")
        with step("agent_layer"):
            agent_layer(REPO / "python", objs, out / "agent.squashfs", out / "agent.roothash")
        bpf_record = bpf_sources(objs)
    with step("test_layer"):
        test_layer(test_debs, out / "test.squashfs")
    layers = (out / "root.squashfs", out / "agent.squashfs", out / "test.squashfs")
    hashes = (out / "root.roothash", out / "agent.roothash")
    boot_files(kernel, busybox, lib_debs, out, disk.DEFAULT_CMDLINE, layers, hashes)
    with step("disks"):
        disks(
            out / "BOOTX64.EFI",
            out / "root.squashfs",
            out / "agent.squashfs",
            None,
            out / "appliance.raw",
            out / "appliance.qcow2",
        )
        disks(
            out / "BOOTX64-test.EFI",
            out / "root.squashfs",
            out / "agent.squashfs",
            out / "test.squashfs",
            out / "appliance-test.raw",
            out / "appliance-test.qcow2",
        )
    artefacts = {n: out / n for n in ARTEFACTS}
    write_manifest(
        out / "manifest.json",
        debs,
        wheels,
        bpf_record,
        artefacts,
        {"builder": "sennet_image build (no Bazel)"},
    )
    log("build_done", out=out, raw_mib=f"{(out / 'appliance.raw').stat().st_size / 2**20:.1f}")
    return artefacts
