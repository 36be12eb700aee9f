"""The one QEMU command line: what every boot of the appliance (images/boot, the VM
harness, the demo) gets, whichever way it boots."""

from __future__ import annotations

from pathlib import Path

from sennet_image import qemu

DIRECT = qemu.DirectBoot(kernel=Path("/i/vmlinuz"), initrd=Path("/i/initrd.img"), cmdline="quiet")
UEFI = qemu.UefiBoot(vars_file=Path("/w/OVMF_VARS.fd"))


def _argv(boot: qemu.DirectBoot | qemu.UefiBoot, accel: str = "tcg", **kw: object) -> list[str]:
    return qemu.qemu_argv(
        accel=accel,
        disk=Path("/w/disk.qcow2"),
        boot=boot,
        memory_mib=512,
        smp=2,
        monitored_netdev=kw.pop("monitored_netdev", "user,restrict=on"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_the_monitored_nic_sees_every_vlan_in_direct_and_uefi_boots() -> None:
    for boot in (DIRECT, UEFI):
        devices = _values(_argv(boot), "-device")
        monitored = [d for d in devices if "netdev=mon" in d]
        assert monitored == [f"virtio-net-pci,netdev=mon,mac={qemu.MONITORED_MAC},ctrl_vlan=off"]


def test_tcg_picks_the_one_cpu_model_in_both_modes_and_kvm_the_host_cpu() -> None:
    assert _values(_argv(DIRECT), "-cpu") == ["Nehalem"]
    assert _values(_argv(UEFI), "-cpu") == ["Nehalem"]
    assert _values(_argv(DIRECT, accel="kvm"), "-cpu") == ["host"]
    assert _values(_argv(UEFI, accel="kvm"), "-accel") == ["kvm"]


def test_management_is_eth0_and_the_monitored_nic_eth1_after_the_disk() -> None:
    argv = _argv(DIRECT)
    order = [a for a in argv if a.startswith(("file=", "virtio-net-pci"))]
    assert order[0].startswith("file=/w/disk.qcow2,if=virtio,format=qcow2")
    assert "netdev=mgmt" in order[1] and qemu.MGMT_MAC in order[1]
    assert "netdev=mon" in order[2]


def test_callers_choose_the_tap_backend_ssh_forward_and_disk_cache() -> None:
    argv = _argv(DIRECT, monitored_netdev=qemu.tap_netdev(7), ssh_port=2222, disk_cache="unsafe")
    assert _values(argv, "-netdev") == [
        "user,id=mgmt,hostfwd=tcp:127.0.0.1:2222-:22",
        "tap,fd=7,id=mon",
    ]
    assert _values(argv, "-drive") == ["file=/w/disk.qcow2,if=virtio,format=qcow2,cache=unsafe"]


def test_direct_boot_hands_qemu_the_kernel_and_uefi_boot_the_firmware() -> None:
    direct = _argv(DIRECT)
    assert _values(direct, "-kernel") == ["/i/vmlinuz"]
    assert _values(direct, "-append") == ["quiet"]
    assert "-machine" not in direct
    uefi = _argv(UEFI)
    assert "-kernel" not in uefi
    assert _values(uefi, "-machine") == ["q35"]
    assert _values(uefi, "-drive")[1:] == [
        f"if=pflash,format=raw,readonly=on,file={qemu.OVMF_CODE}",
        "if=pflash,format=raw,file=/w/OVMF_VARS.fd",
    ]


def test_an_explicit_accelerator_skips_the_kvm_probe(tmp_path: Path) -> None:
    assert qemu.accelerator(tmp_path / "no-such-kernel", "tcg") == "tcg"


def test_extra_disks_come_read_only_after_the_boot_disk_and_the_nics() -> None:
    argv = _argv(DIRECT, extra_disks=[Path("/i/appliance-test.raw"), Path("/w/other.qcow2")])
    assert _values(argv, "-drive") == [
        "file=/w/disk.qcow2,if=virtio,format=qcow2",
        "file=/i/appliance-test.raw,if=virtio,format=raw,readonly=on",
        "file=/w/other.qcow2,if=virtio,format=qcow2,readonly=on",
    ]
    order = [a for a in argv if a.startswith(("file=", "virtio-net-pci"))]
    assert order[0].startswith("file=/w/disk.qcow2") and "netdev=mon" in order[2]


def test_a_direct_boot_takes_the_kernels_elf_and_the_uncompressed_initramfs(
    tmp_path: Path,
) -> None:
    for name in ("vmlinuz", "vmlinux", "initrd.img", "initrd.cpio", "initrd-test.cpio"):
        (tmp_path / name).write_bytes(b"x")
    prod = qemu.direct_boot(tmp_path, "quiet")
    assert (prod.kernel.name, prod.initrd.name, prod.cmdline) == ("vmlinux", "initrd.cpio", "quiet")
    test = qemu.direct_boot(tmp_path, "quiet", test=True)
    assert (test.kernel.name, test.initrd.name) == ("vmlinux", "initrd-test.cpio")


def test_a_build_from_before_the_direct_boot_files_boots_its_bzimage(tmp_path: Path) -> None:
    for name in ("vmlinuz", "initrd.img", "initrd-test.img"):
        (tmp_path / name).write_bytes(b"x")
    old = qemu.direct_boot(tmp_path, "quiet", test=True)
    assert (old.kernel.name, old.initrd.name) == ("vmlinuz", "initrd-test.img")
