"""The build steps, each a function of declared input files to output files.

Bazel runs them one genrule each (see images/BUILD.bazel), so a change to the
agent re-runs only `agent_layer` and `disks`; `build_all` runs them in order
for a build without Bazel.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sennet_image import (
    disk,
    initramfs,
    lock,
    rootfs,
    sbom,
    signing,
    slots,
    startup,
    statefs,
    verity,
)
from sennet_image.fetch import fetch
from sennet_image.manifest import bpf_sources
from sennet_image.manifest import write as write_manifest
from sennet_image.proc import die, log, run, step

REPO = Path(__file__).resolve().parent.parent.parent


# Every file a build leaves in its output directory besides manifest.json (which lists them).
ARTEFACTS = (
    "appliance.raw",
    "appliance.qcow2",
    "appliance-test.raw",
    "appliance-test.qcow2",
    "vmlinuz",
    "vmlinux",  # direct boots: the kernel's ELF and the initramfs uncompressed
    "initrd.img",
    "initrd-test.img",
    "initrd.cpio",
    "initrd-test.cpio",
    "cmdline",
    "image.json",
    "uki-a.efi",
    "uki-b.efi",
    "uki-test-a.efi",
    "uki-test-b.efi",
    "root.squashfs",
    "root.roothash",
    "agent.squashfs",
    "agent.roothash",
    "test.squashfs",
    "root.files",
    "sbom.spdx.json",
)
# What the SBOM lists besides the pinned inputs: everything the disks are made of.
SBOM_ARTEFACTS = (
    "root.squashfs",
    "agent.squashfs",
    "test.squashfs",
    "vmlinuz",
    "initrd.img",
    "initrd-test.img",
    "uki-a.efi",
    "uki-b.efi",
    "uki-test-a.efi",
    "uki-test-b.efi",
)


@dataclass(frozen=True)
class Disks:
    """The disk artefacts of one variant."""

    raw: Path
    qcow2: Path


def verity_layer(tree: Path, out: Path, roothash_out: Path, mount: str = "/") -> None:
    """squashfs of `tree` (mounted at `mount`: the agent's start-up files go first) with its
    dm-verity hash tree appended; the root hash beside it."""
    order = startup.sort_file(tree, mount, tree.parent / f"{out.name}.sort")
    rootfs.mksquashfs(tree, out, order)
    with step("verity", out=out.name):
        roothash_out.write_text(verity.format_layer(out) + "\n")


def base_layer(
    debs: list[Path],
    wheels: list[Path],
    kernel_deb: Path,
    out: Path,
    files_out: Path,
    roothash_out: Path,
) -> None:
    """Root debs + wheels + overlay + the kernel's USB-stick drivers -> root.squashfs (+ verity
    tree), its root hash, file list."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "root"
        files = rootfs.build_base(
            tree, sorted(debs, key=lambda p: p.name), sorted(wheels), kernel_deb
        )
        verity_layer(tree, out, roothash_out)
    files_out.write_text("\n".join(files) + "\n")


def agent_layer(python_src: Path, bpf_objects: list[Path], out: Path, roothash_out: Path) -> None:
    """python/sennet + BPF objects -> agent.squashfs (+ verity tree; mounted at /opt/sennet)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "agent"
        rootfs.build_agent(tree, python_src, sorted(bpf_objects))
        verity_layer(tree, out, roothash_out, "/opt/sennet")


def test_layer(debs: list[Path], out: Path) -> None:
    """Test-only extras (dropbear) -> test.squashfs (mounted at /opt/sennet-test)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "test"
        rootfs.build_testfs(tree, sorted(debs, key=lambda p: p.name))
        rootfs.mksquashfs(tree, out)


# Per variant: its initramfs, and one UKI per slot (they differ only in `sennet.slot=`).
INITRDS = {"production": "initrd.img", "test": "initrd-test.img"}


def uki_name(variant: str, slot: str) -> str:
    """The build artefact holding `variant`'s UKI for `slot` (uki-a.efi, uki-test-b.efi)."""
    return f"uki-{'test-' if variant == 'test' else ''}{slots.check_slot(slot)}.efi"


def boot_files(
    kernel_deb: Path,
    busybox_deb: Path,
    lib_debs: list[Path],
    outdir: Path,
    cmdline: str,
    layers: tuple[Path, Path],
    root_hashes: tuple[Path, Path],
) -> None:
    """Kernel, per variant an initramfs and a signed UKI per slot, `cmdline` (slot a's, for
    direct boot) and image.json; `layers` (root, agent squashfs, verity trees appended) give
    the image digest, `root_hashes` (root, agent) go on every command line; `lib_debs` hold
    dmsetup and its libraries for the initramfs."""
    ident = slots.identity(*layers)
    cmdline = f"{cmdline} {verity_args(*root_hashes)}"
    tables = {outdir / INITRDS[v]: disk.partition_table(disk.layout(v)) for v in disk.VARIANTS}
    with step("initramfs"):
        release = initramfs.build(kernel_deb, busybox_deb, lib_debs, tables, outdir / "vmlinuz")
    (outdir / "cmdline").write_text(ident.cmdline(cmdline, "a") + "\n")
    (outdir / "kernel-release").write_text(release + "\n")
    write_identity(ident, outdir / "image.json")
    osrel = slots.osrel(rootfs.os_release(), ident.version)
    with step("uki", version=ident.version):
        for variant, initrd in INITRDS.items():
            for slot in slots.SLOTS:
                disk.build_uki(
                    outdir / "vmlinuz",
                    outdir / initrd,
                    ident.cmdline(cmdline, slot),
                    osrel,
                    outdir / uki_name(variant, slot),
                )
    with step("sign", key=signing.signing_key().source):
        for variant in INITRDS:
            for slot in slots.SLOTS:
                signing.sign(outdir / uki_name(variant, slot))


def verity_args(root_hash: Path, agent_hash: Path) -> str:
    """`sennet.verity.root=HEX sennet.verity.agent=HEX` from the layers' .roothash files."""
    hashes = dict(
        zip(verity.ROLES, map(verity.read_root_hash, (root_hash, agent_hash)), strict=True)
    )
    return verity.cmdline_args(hashes)


def write_identity(ident: slots.Identity, out: Path) -> None:
    """image.json: {version, image_digest}, what make-bundle and the tests read."""
    data = {"version": ident.version, "image_digest": ident.image_digest}
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_identity(path: Path) -> slots.Identity:
    """A build's image.json, checked."""
    try:
        data = json.loads(path.read_text())
        version, digest = data["version"], data["image_digest"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        die(f"{path}: not a build's image.json ({e})")
    if not isinstance(version, str) or not isinstance(digest, str) or len(digest) != 64:
        die(f"{path}: version or image_digest malformed")
    return slots.Identity(slots.check_version(version, str(path)), digest)


def disks(
    uki: Path,
    image_json: Path,
    layers: tuple[Path, Path, Path | None],
    raw: Path,
    qcow2: Path,
    sbom: Path | None = None,
) -> None:
    """GPT disk: ESP (systemd-boot + slot a's UKI, committed), slot a = the layers, slot b
    zeroed, [test layer], state (an empty ext4 with a journal), each with the GUID its
    variant's initramfs looks for (disk.layout). The SBOM, if given, goes on the ESP as
    sennet/sbom.spdx.json (the one place in the image outside what it lists)."""
    root, agent, test = layers
    ident = read_identity(image_json)
    ids = disk.layout("test" if test is not None else "production")
    with tempfile.TemporaryDirectory(dir=raw.parent) as tmp:
        esp = Path(tmp) / "esp.img"
        with step("esp"):
            disk.build_esp(
                {slots.entry_name("a", ident.version): uki},
                esp,
                {"sbom.spdx.json": sbom.read_bytes()} if sbom else None,
            )
        state = Path(tmp) / "state.img"
        with step("state"):
            statefs.build_state(state, disk.STATE_MIB, disk.derived_uuid("state-fs", ids["state"]))
        contents: dict[str, tuple[str, Path | None, int]] = {
            "esp": (disk.ESP_TYPE, esp, disk.ESP_MIB),
            "root-a": (disk.ROOT_TYPE, root, disk.ROOT_SLOT_MIB),
            "agent-a": (disk.DATA_TYPE, agent, disk.AGENT_SLOT_MIB),
            "root-b": (disk.ROOT_TYPE, None, disk.ROOT_SLOT_MIB),
            "agent-b": (disk.DATA_TYPE, None, disk.AGENT_SLOT_MIB),
            "state": (disk.DATA_TYPE, state, disk.STATE_MIB),
        }
        if test is not None:
            contents["test"] = (disk.DATA_TYPE, test, disk.TEST_MIB)
        parts = [
            disk.Partition(disk.PARTITION_NAMES[r], t, c, mib, ids[r])
            for r in disk.ROLES
            if r in contents
            for t, c, mib in [contents[r]]
        ]
        disk.build_disk(parts, raw)
    with step("qcow2", out=qcow2.name):
        disk.to_qcow2(raw, qcow2)


BPF_PROGRAMS = ("sennet_tc", "bench_empty")
EARLY_ATTACH = "sennet-early-attach"  # the boot-time loader, built with the objects


def bpf_objects(outdir: Path) -> list[Path]:
    """Compile the BPF programs and the boot-time loader exactly as //bpf:objects does (flags
    from bpf/cflags and bpf/loader/cflags, from the repository root, its path mapped to
    `.`), so both builds make the same files."""
    outdir.mkdir(parents=True, exist_ok=True)
    lines = (REPO / "bpf" / "cflags").read_text().splitlines()
    flags = " ".join(line for line in lines if not line.startswith("#")).split()
    for name in BPF_PROGRAMS:
        run(
            [
                "clang",
                *flags,
                "-I/usr/include/x86_64-linux-gnu",
                "-Ibpf",
                f"-fdebug-prefix-map={REPO}=.",
                "-c",
                f"bpf/{name}.bpf.c",
                "-o",
                outdir / f"{name}.bpf.o",
            ],
            cwd=REPO,
        )
    loader = REPO / "bpf" / "loader"
    lflags = [x for x in (loader / "cflags").read_text().splitlines() if not x.startswith("#")]
    early = outdir / EARLY_ATTACH
    run(["clang", *" ".join(lflags).split(), "-o", early, loader / "early_attach.c", "-lbpf"])
    return [*sorted(outdir.glob("*.bpf.o")), early]


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
    bpf_dir = out / "bpf"
    with step("bpf"):
        objs = bpf_objects(bpf_dir)
    with step("base_layer"):
        layer, files = out / "root.squashfs", out / "root.files"
        base_layer(root_debs, wheel_paths, kernel, layer, files, out / "root.roothash")
    with step("agent_layer"):
        agent_layer(REPO / "python", objs, out / "agent.squashfs", out / "agent.roothash")
    bpf_record = bpf_sources(objs)
    with step("test_layer"):
        test_layer(test_debs, out / "test.squashfs")
    root, agent = out / "root.squashfs", out / "agent.squashfs"
    hashes = (out / "root.roothash", out / "agent.roothash")
    boot_files(kernel, busybox, lib_debs, out, disk.DEFAULT_CMDLINE, (root, agent), hashes)
    with step("sbom"):
        sbom.write(
            sbom.inputs(
                debs,
                wheels,
                [*paths.values(), *wheel_paths],
                [out / n for n in SBOM_ARTEFACTS],
                objs,
            ),
            out / "sbom.spdx.json",
        )
    with step("disks"):
        disks(
            out / "uki-a.efi",
            out / "image.json",
            (root, agent, None),
            out / "appliance.raw",
            out / "appliance.qcow2",
            sbom=out / "sbom.spdx.json",
        )
        disks(
            out / "uki-test-a.efi",
            out / "image.json",
            (root, agent, out / "test.squashfs"),
            out / "appliance-test.raw",
            out / "appliance-test.qcow2",
            sbom=out / "sbom.spdx.json",
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
