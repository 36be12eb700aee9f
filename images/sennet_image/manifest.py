"""The build manifest: every input with version and sha256, the tools with versions, outputs.

For audit: a reader can check each pinned input against the lock and each
artefact against the file on disk, and see which host tools took part.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

from sennet_image.fsutil import sha256_file
from sennet_image.lock import DebPin, WheelPin
from sennet_image.proc import build_root, run, source_date_epoch
from sennet_image.signing import signer

# The build's tools. With a build root (always, in Bazel's build and images/build) they
# run from it, pinned by buildroot.lock.json; their versions are recorded as measured there.
HOST_TOOLS = {
    "python3.11": ["python3.11", "--version"],
    "clang": ["clang", "--version"],
    "dpkg-deb": ["dpkg-deb", "--version"],
    "mksquashfs": ["mksquashfs", "-version"],
    "objcopy": ["objcopy", "--version"],
    "mkfs.fat": ["mkfs.fat", "--help"],
    "mtools": ["mtools", "--version"],
    "sfdisk": ["sfdisk", "--version"],
    "qemu-img": ["qemu-img", "--version"],
    "veritysetup": ["veritysetup", "--version"],
    "sbsign": ["sbsign", "--version"],
    "libfaketime": ["dpkg-query", "-W", "-f", "${Version}", "libfaketime"],
    "mke2fs": ["mke2fs", "-V"],
}
EFI_STUB_PACKAGE = "systemd-boot-efi"
# Debian packages on the host whose files actions read (the BPF build's UAPI headers).
HOST_PACKAGES = ("linux-libc-dev", "libc6-dev")
# What the host still provides when a build root is in use: the bootstrap that makes and
# enters it (python3 runs this package; dpkg-deb unpacks; unshare/mount/sh enter).
BOOTSTRAP = {
    "dpkg-deb": ["dpkg-deb", "--version"],
    "unshare": ["unshare", "--version"],
}


def tool_version(argv: list[str], *, host: bool = False) -> str:
    """First version-looking token of the tool's own version output."""
    res = run(argv, check=False, host=host)
    text = (res.stdout + res.stderr).decode(errors="replace")
    m = re.search(r"\d+\.\d+(?:\.\d+)?(?:[-+~][\w.+~-]+)?", text)
    return m.group(0) if m else "unknown"


def build_root_record() -> dict[str, object] | None:
    """The manifest's `build_root`: the lock digest of the root the tools ran in and their
    versions as measured inside it; None when the build used the host's tools."""
    root = build_root()
    if root is None:
        return None
    return {
        "digest": (root / "buildroot.stamp").read_text().strip(),
        "tools": {name: tool_version(argv) for name, argv in HOST_TOOLS.items()},
    }


def host_tools() -> dict[str, str]:
    """What the host contributed: with a build root only the bootstrap; without one (the
    flake's build) every tool, and the Debian package versions of the EFI stub and of
    systemd-boot (both from systemd-boot-efi) and of the headers."""
    if build_root() is not None:
        tools = {name: tool_version(argv, host=True) for name, argv in BOOTSTRAP.items()}
        tools["python3"] = platform.python_version()
        return tools
    tools = {name: tool_version(argv) for name, argv in HOST_TOOLS.items()}
    stub = run(["dpkg-query", "-W", "-f", "${Version}", EFI_STUB_PACKAGE], check=False)
    efi = f"{EFI_STUB_PACKAGE} (linuxx64.efi.stub, systemd-bootx64.efi)"
    tools[efi] = stub.stdout.decode() or "unknown"
    for pkg in HOST_PACKAGES:
        res = run(["dpkg-query", "-W", "-f", "${Version}", pkg], check=False)
        tools[f"{pkg} (headers)"] = res.stdout.decode() or "unknown"
    return tools


def bpf_sources(objects: list[Path]) -> dict[str, str]:
    """The manifest's `sources` entry for the BPF objects (name -> sha256), whichever build
    compiled them: the objects are built on the host, so the manifest is their record."""
    return {
        "bpf_objects": json.dumps(
            {o.name: sha256_file(o) for o in sorted(objects, key=lambda o: o.name)}
        )
    }


def write(
    out: Path,
    debs: list[DebPin],
    wheels: list[WheelPin],
    sources: dict[str, str],
    artefacts: dict[str, Path],
    extra: dict[str, object],
) -> None:
    """Write the manifest JSON (sorted keys, so two builds compare byte for byte)."""
    body = {
        "source_date_epoch": source_date_epoch(),
        "debian_packages": [
            {"name": d.name, "version": d.version, "path": d.path, "sha256": d.sha256, "set": d.set}
            for d in debs
        ],
        "python_wheels": [
            {"name": w.name, "version": w.version, "file": w.filename, "sha256": w.sha256}
            for w in wheels
        ],
        "sources": sources,
        "host_tools": host_tools(),
        "build_root": build_root_record(),
        "artefacts": {
            name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for name, p in sorted(artefacts.items())
        },
        # Who signed each EFI binary, read back from its signature (sbverify --list).
        "secure_boot_signers": {
            name: signer(p)
            for name, p in sorted(artefacts.items())
            if name.lower().endswith(".efi")
        },
        **extra,
    }
    out.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
