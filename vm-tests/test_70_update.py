"""Signed A/B updates on a flashed disk: UEFI firmware, systemd-boot, real slots, real reboots.

One VM of its own (the shared one boots directly, without firmware or boot
loader), booted through OVMF and systemd-boot, provisioned through the ESP as a
flashed box is. The tests run in file order and share its boots:

1. tampered bundle, wrong key, below the minimum version: refused, nothing written;
2. QEMU killed while the inactive slot is written: slot a boots, b is never tried;
3. update A->B from a bundle copied over SSH: the health check passes, B is
   committed, and a reboot stays on B;
4. a bundle whose agent cannot attach (its layer has no BPF objects): it boots,
   fails the check as its agent exits a third time, marks itself bad and reboots;
   the last good slot comes back;
5. a USB stick plugged into the running box (QMP hot-plug onto its xHCI controller)
   holding a tampered bundle and a good one: the tampered one is refused, the good
   one installed, the box reboots into it and commits it; nobody logs in.

QEMU runs with -no-reboot, so a guest's own reboot ends the process and the
test starts it again: the power cycle a real box's reset would be.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import host_control_plane
from sennet.testing.controlplane import ControlPlane
from sennet.testing.scrape import matching
from sennet.testing.vm import qmp
from sennet.testing.vm.appliance import Appliance, image_dir
from sennet.testing.vm.guest import agent_id
from sennet.testing.vm.machine import Machine
from sennet.testing.vm.uefi import uefi_booted
from sennet_image.kmods import USB_STORAGE

REPO = Path(__file__).resolve().parents[1]
DEV_KEY = REPO / "images" / "keys" / "dev" / "update.key"
UPDATE = "python3 -m sennet.update.cli"
HEALTH_TIMEOUT_S = 60
FACTORY = "sennet-a-0.1.0.efi"


@dataclass(frozen=True)
class Bundles:
    good: Path  # 0.2.0, the build's layers
    broken: Path  # 0.3.0, an agent layer without the BPF objects
    downgrade: Path  # 0.0.5, signed, below update_min_version
    stranger_sig: Path  # a valid signature of the good manifest by a key the device lacks
    sig_offset: int  # where manifest.sig's 64 bytes start in a bundle
    tamper_offset: int  # a byte inside root.img
    tamper_byte: int  # a value that differs from the byte there


def make_bundle(out: Path, version: str, agent_layer: Path | None = None) -> Path:
    argv = [str(REPO / "images" / "make-bundle"), "--image", str(image_dir()), "--out", str(out)]
    argv += ["--variant", "test", "--version", version, "--key", str(DEV_KEY)]
    if agent_layer is not None:
        argv += ["--agent-layer", str(agent_layer)]
    subprocess.run(argv, check=True)
    return out


def agent_layer_without_bpf(work: Path) -> Path:
    """The build's agent layer with every *.bpf.o removed: the agent cannot load or attach."""
    tree = work / "agent-tree"
    subprocess.run(
        ["unsquashfs", "-q", "-no-progress", "-d", str(tree), str(image_dir() / "agent.squashfs")],
        check=True,
    )
    removed = [p for p in tree.rglob("*.bpf.o")]
    assert removed, "the agent layer should hold the BPF objects"
    for p in removed:
        p.unlink()
    out = work / "agent-broken.squashfs"
    subprocess.run(
        ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-all-root", "-no-progress"],
        check=True,
    )
    return out


def sign(key: Path, data: bytes, work: Path) -> bytes:
    src, sig = work / "manifest.to-sign", work / "manifest.sig.out"
    src.write_bytes(data)
    argv = ["openssl", "pkeyutl", "-sign", "-inkey", str(key), "-rawin"]
    subprocess.run([*argv, "-in", str(src), "-out", str(sig)], check=True)
    return sig.read_bytes()


def downgrade_bundle(work: Path) -> Path:
    """Signed with the device's (development) key, version 0.0.5: refused on its version,
    before any image is read, so its images can be small placeholders."""
    images = {
        n: hashlib.sha256(n.encode()).digest() * 4 for n in ("uki-a", "uki-b", "root", "agent")
    }
    manifest = {
        "format": "sennet-bundle/1",
        "compatible": "sennet-appliance/x86_64/test",
        "version": "0.0.5",
        "image_digest": "0" * 64,
        "min_from_version": "0.0.1",
        "images": {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in images.items()
        },
    }
    raw = json.dumps(manifest, sort_keys=True).encode()
    members = [("manifest.json", raw), ("manifest.sig", sign(DEV_KEY, raw, work))]
    members += [(f"{n}.{'efi' if n.startswith('uki') else 'img'}", d) for n, d in images.items()]
    out = work / "downgrade.bundle"
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def bundles() -> Iterator[Bundles]:
    with tempfile.TemporaryDirectory(prefix="sennet-bundles-") as tmp:
        work = Path(tmp)
        good = make_bundle(work / "good.bundle", "0.2.0")
        broken = make_bundle(work / "broken.bundle", "0.3.0", agent_layer_without_bpf(work))
        with tarfile.open(good) as tar:
            manifest = tar.getmember("manifest.json")
            sig = tar.getmember("manifest.sig")
            root = tar.getmember("root.img")
        raw = good.read_bytes()[manifest.offset_data : manifest.offset_data + manifest.size]
        stranger = work / "stranger.key"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(stranger)], check=True
        )
        (work / "stranger.sig").write_bytes(sign(stranger, raw, work))
        tamper_at = root.offset_data + root.size // 2
        with good.open("rb") as f:
            f.seek(tamper_at)
            original = f.read(1)[0]
        yield Bundles(
            good,
            broken,
            downgrade_bundle(work),
            work / "stranger.sig",
            sig.offset_data,
            tamper_at,
            original ^ 0xFF,
        )


def agent_toml(cp: ControlPlane) -> bytes:
    """The provisioned settings (they replace the image's agent.toml): a short health timeout."""
    return (
        'interfaces = ["eth1"]\nloader = "libbpf"\nbpf_dir = "/opt/sennet/bpf"\n'
        'state_dir = "/var/lib/sennet"\ninterval_s = 2\nmetrics_listen = "127.0.0.1:9101"\n'
        f'control_plane = "10.0.2.2:{cp.grpc_port}"\nbootstrap_token = "{cp.token}"\n'
        'run_as = "sennet-agent"\nupdate_min_version = "0.1.0"\n'
        f"update_health_timeout_s = {HEALTH_TIMEOUT_S}\n"
    ).encode()


@pytest.fixture(scope="module")
def own_cp(workdir: Path) -> Iterator[ControlPlane]:
    """A control plane of this module's own: the appliances updated here must not join the
    shared one's fleet (other tests count its agents)."""
    with host_control_plane(workdir, "update-cp") as cp:
        yield cp


def qmp_socket(workdir: Path) -> Path:
    return workdir / "upd.qmp"


@pytest.fixture(scope="module")
def uvm(workdir: Path, ssh_key: Path, own_cp: ControlPlane) -> Iterator[Appliance]:
    # a USB controller, as every box has, and QEMU's control socket to plug a stick into it
    usb = ["-device", "qemu-xhci,id=usb", "-qmp", f"unix:{qmp_socket(workdir)},server=on,wait=off"]
    toml = {"agent.toml": agent_toml(own_cp)}
    with uefi_booted("upd", workdir, ssh_key, toml, extra_argv=usb) as vm:
        vm.machine.wait_for_ssh()
        yield vm


# -- what the guest shows -------------------------------------------------------------


def entries(m: Machine) -> list[str]:
    return sorted(m.succeed("ls /run/esp/EFI/Linux").split())


def booted_slot(m: Machine) -> str:
    return m.succeed("sed -n 's/^SENNET_SLOT=//p' /run/sennet/image.env").strip()


def partition(m: Machine, role: str) -> str:
    return m.succeed(f"sed -n 's/^{role}=//p' /run/sennet/partitions").strip()


def nonzero_bytes(m: Machine, dev: str) -> int:
    return int(m.succeed(f"tr -d '\\000' < {dev} | wc -c", timeout=120).strip())


def last_outcome(m: Machine) -> dict[str, str]:
    status = json.loads(m.succeed("cat /var/lib/sennet/update/status.json"))
    outcome: dict[str, str] = status["last_outcome"]
    return outcome


def restart_after_guest_reboot(m: Machine, ready: str = r"event=agent_ready") -> None:
    """The guest rebooted itself: QEMU (-no-reboot) exited; power it on again."""
    m.wait_exit(60)
    m.start()
    m.wait_for_console(ready, timeout=300)
    m.wait_for_ssh()


def reboot(m: Machine) -> None:
    m.reboot()
    m.wait_for_console(r"event=agent_ready", timeout=300)
    m.wait_for_ssh()


# -- the tests, in order ----------------------------------------------------------------


def test_refused_bundles_write_nothing(uvm: Appliance, bundles: Bundles) -> None:
    m = uvm.machine
    assert booted_slot(m) == "a"
    assert entries(m) == [FACTORY]
    m.copy_to(bundles.good, "/tmp/good.bundle")
    m.copy_to(bundles.stranger_sig, "/tmp/stranger.sig")
    m.copy_to(bundles.downgrade, "/tmp/downgrade.bundle")
    m.succeed(
        "cp /tmp/good.bundle /tmp/tampered.bundle && "
        f"printf '\\{bundles.tamper_byte:03o}' | "
        f"dd of=/tmp/tampered.bundle bs=1 seek={bundles.tamper_offset} conv=notrunc 2>/dev/null"
    )
    m.succeed(
        "cp /tmp/good.bundle /tmp/wrongkey.bundle && dd if=/tmp/stranger.sig "
        f"of=/tmp/wrongkey.bundle bs=1 seek={bundles.sig_offset} conv=notrunc 2>/dev/null"
    )
    for name, reason in (
        ("tampered", "digest"),
        ("wrongkey", "signature"),
        ("downgrade", "downgrade"),
    ):
        status, out = m.execute(f"{UPDATE} install /tmp/{name}.bundle", timeout=300)
        assert status == 1, out
        assert out.strip().splitlines()[-1].startswith(f"sennet-update: refused: reason={reason} ")
        assert last_outcome(m)["result"] == "refused"
        assert last_outcome(m)["reason"] == reason
        m.succeed(f"rm /tmp/{name}.bundle")
    assert entries(m) == [FACTORY]
    for role in ("root_b", "agent_b"):
        assert nonzero_bytes(m, partition(m, role)) == 0, f"{role} was written"


def test_killed_while_writing_slot_b_boots_a_and_never_tries_b(
    uvm: Appliance, bundles: Bundles
) -> None:
    m = uvm.machine
    root_b = partition(m, "root_b")
    # Start the install; the moment slot b's root partition shows its first bytes, freeze
    # the installer (so the moment is not missed) and say so on the console: the host then
    # pulls the plug. The freeze only pins the instant; the power cut is QEMU's SIGKILL.
    m.copy_to(bundles.good, "/tmp/good.bundle")
    m.succeed(
        "sh -c '"
        f"{UPDATE} install /tmp/good.bundle > /tmp/install.log 2>&1 & pid=$!; "
        f'while [ "$(head -c 65536 {root_b} | tr -d "\\000" | wc -c)" = 0 ]; do :; done; '
        "kill -STOP $pid; "
        'echo "update-test: writing-slot-b entries=$(ls /run/esp/EFI/Linux | tr "\\n" ,)" '
        "> /dev/console' > /dev/null 2>&1 < /dev/null &"
    )
    found = m.wait_for_console(r"update-test: writing-slot-b entries=(\S*)", timeout=300)
    assert found.group(1) == f"{FACTORY},"  # mid-write: no entry for slot b yet
    m.crash()
    m.start()
    m.wait_for_console(r"event=agent_ready", timeout=300)
    m.wait_for_ssh()
    assert booted_slot(m) == "a"
    assert entries(m) == [FACTORY]  # the half-written slot has no entry: never tried


def test_update_a_to_b_is_committed_and_stays(uvm: Appliance, bundles: Bundles) -> None:
    m = uvm.machine
    m.copy_to(bundles.good, "/tmp/good.bundle")
    out = m.succeed(f"{UPDATE} install /tmp/good.bundle", timeout=600)
    assert "sennet-update: installed: entry=sennet-b-0.2.0+2-0.efi" in out
    assert entries(m) == [FACTORY, "sennet-b-0.2.0+2-0.efi"]
    reboot(m)
    assert booted_slot(m) == "b"
    m.wait_for_console(r"event=update_committed slot=b", timeout=HEALTH_TIMEOUT_S + 60)
    assert entries(m) == [FACTORY, "sennet-b-0.2.0.efi"]
    outcome = last_outcome(m)
    assert (outcome["result"], outcome["from_version"], outcome["to_version"]) == (
        "committed",
        "0.1.0",
        "0.2.0",
    )
    assert outcome["reason"] in ("heartbeat_acked", "self_test")
    reboot(m)
    assert booted_slot(m) == "b"
    assert (
        m.succeed("sed -n 's/^SENNET_IMAGE_VERSION=//p' /run/sennet/image.env").strip() == "0.2.0"
    )


def test_an_agent_that_cannot_attach_rolls_back_by_itself(
    uvm: Appliance, bundles: Bundles, own_cp: ControlPlane
) -> None:
    m = uvm.machine
    m.copy_to(bundles.broken, "/tmp/broken.bundle")
    out = m.succeed(f"{UPDATE} install /tmp/broken.bundle", timeout=600)
    assert "entry=sennet-a-0.3.0+2-0.efi" in out
    m.reboot()
    # slot a, 0.3.0, on trial: the agent never attaches, the check fails, the updater marks
    # the entry bad and reboots; no test action in between
    m.wait_for_console(r"event=update_rolled_back slot=a", timeout=HEALTH_TIMEOUT_S + 300)
    restart_after_guest_reboot(m)
    assert booted_slot(m) == "b"
    m.wait_until_succeeds("! ls /run/esp/EFI/Linux/sennet-a-*", timeout=60)
    assert entries(m) == ["sennet-b-0.2.0.efi"]
    outcome = last_outcome(m)
    assert (outcome["result"], outcome["from_version"], outcome["to_version"]) == (
        "rolled_back",
        "0.2.0",
        "0.3.0",
    )
    # the BPF objects are missing: the agent exits 2 (an operator error) at every start, and
    # the check fails at its third exit, without waiting out the timeout
    assert outcome["reason"] == "agent_exited: 3 times, last status 2"
    # ... and the agent on the good slot tells the control plane, which shows it in /metrics
    agent = agent_id(m)

    def reported() -> bool:
        found = matching(own_cp.samples(), "sennet_agent_update_last_outcome", agent=agent)
        return any(dict(k)["result"] == "rolled_back" for k in found)

    own_cp.wait_until("rolled_back in /metrics", reported, timeout=120)
    (labels,) = matching(own_cp.samples(), "sennet_agent_update_last_outcome", agent=agent)
    assert dict(labels) == {
        "agent": agent,
        "result": "rolled_back",
        "reason": "agent_exited: 3 times, last status 2",
        "from_version": "0.2.0",
        "to_version": "0.3.0",
    }


def fat_stick(path: Path, files: dict[str, Path]) -> Path:
    """A FAT32 filesystem image holding `files` at its top, as a laptop would write it."""
    kib = sum(f.stat().st_size for f in files.values()) // 1024 + 16 * 1024
    subprocess.run(["mkfs.vfat", "-F", "32", "-C", str(path), str(kib)], check=True)
    for name, f in files.items():
        subprocess.run(["mcopy", "-i", str(path), str(f), f"::{name}"], check=True)
    return path


def test_a_bundle_on_a_usb_stick_is_installed_when_the_stick_is_plugged_in(
    uvm: Appliance, workdir: Path
) -> None:
    m = uvm.machine
    assert (booted_slot(m), entries(m)) == ("b", ["sennet-b-0.2.0.efi"])
    good = make_bundle(workdir / "sennet-0.4.0.bundle", "0.4.0")
    tampered = workdir / "tampered-0.4.0.bundle"
    with tarfile.open(good) as tar:
        root = tar.getmember("root.img")
    data = bytearray(good.read_bytes())
    data[root.offset_data + root.size // 3] ^= 0xFF
    tampered.write_bytes(bytes(data))
    del data
    stick = fat_stick(
        workdir / "stick.img", {"1-tampered.bundle": tampered, "2-sennet-0.4.0.bundle": good}
    )
    good.unlink()
    tampered.unlink()
    console_before = len(m.console())
    qmp.execute(
        qmp_socket(workdir),
        "blockdev-add",
        {
            "driver": "raw",
            "node-name": "stick",
            "read-only": True,
            "file": {"driver": "file", "filename": str(stick)},
        },
    )
    plug = {"driver": "usb-storage", "id": "stick0", "drive": "stick"}
    qmp.execute(qmp_socket(workdir), "device_add", plug)
    # no login, no command: the updater finds the stick, refuses the tampered bundle (both
    # claim 0.4.0, so the name orders them) and installs the good one, then reboots
    m.wait_for_console(r"event=rebooting into=sennet-a-0\.4\.0\+2-0\.efi source=usb", 600)
    seen = m.console()[console_before:]
    # loaded when the daemon first looked, after this boot's health step, before the plug
    assert f"event=usb_drivers loaded={len(USB_STORAGE)} failed=none" in m.console()
    assert "event=usb_volume device=sda bundles=2" in seen
    refused = seen.index("event=update_refused bundle=1-tampered.bundle reason=digest")
    installed = seen.index("event=update_installed slot=a version=0.4.0")
    assert refused < installed
    restart_after_guest_reboot(m)  # the stick was pulled while the box was off
    assert booted_slot(m) == "a"
    m.wait_for_console(r"event=update_committed slot=a", timeout=HEALTH_TIMEOUT_S + 60)
    assert entries(m) == ["sennet-a-0.4.0.efi", "sennet-b-0.2.0.efi"]
    outcome = last_outcome(m)
    assert (outcome["result"], outcome["from_version"], outcome["to_version"]) == (
        "committed",
        "0.2.0",
        "0.4.0",
    )
    stick.unlink()
