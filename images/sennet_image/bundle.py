"""`images/make-bundle`: a build's slot images as one signed update bundle.

The bundle is an uncompressed POSIX (ustar) tar, members in a fixed order:
manifest.json, manifest.sig, uki-a.efi, uki-b.efi, root.img, agent.img.
Everything in it is reproducible: mtime = SOURCE_DATE_EPOCH, owner 0:0, mode
0644, the manifest's keys sorted, and an Ed25519 signature (deterministic by
design) made by Debian's `openssl pkeyutl -sign -rawin`: the same build and
key give the same bytes. The device checks the signature over the
manifest.json bytes against its keyring before it reads anything else, then
each image's size and sha256 against the manifest.

The slot is chosen on the device, so the bundle carries both UKIs, each with
its slot and the bundle's identity (version, image digest) on its command
line; they are made here from the build's kernel and initramfs, so a
`--version` or a replaced layer gives UKIs that name what the bundle holds.
Each UKI also carries the dm-verity root hashes of the bundle's layers (a
replaced layer is given its hash tree here) and is signed for Secure Boot
with the build's key (signing.py) before the manifest records its sha256.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
from pathlib import Path

from sennet_image import build, disk, rootfs, signing, slots, verity
from sennet_image.fsutil import sha256_file
from sennet_image.proc import die, log, run, source_date_epoch

FORMAT = "sennet-bundle/1"
ARCH = "x86_64"
DEFAULT_MIN_FROM = "0.1.0"
DEV_KEY = Path(__file__).resolve().parent.parent / "keys" / "dev" / "update.key"
SIGNATURE_BYTES = 64
# Manifest "images" key -> tar member, in the bundle's order after manifest + signature.
MEMBERS = {
    "uki-a": "uki-a.efi",
    "uki-b": "uki-b.efi",
    "root": "root.img",
    "agent": "agent.img",
}


def compatible(variant: str) -> str:
    """What a device of `variant` accepts: `sennet-appliance/x86_64/<variant>`."""
    if variant not in disk.VARIANTS:
        die(f"unknown variant {variant!r}: one of {', '.join(disk.VARIANTS)}")
    return f"sennet-appliance/{ARCH}/{variant}"


def manifest(variant: str, ident: slots.Identity, min_from: str, images: dict[str, Path]) -> bytes:
    """manifest.json's bytes: sorted keys, two-space indent, one trailing newline."""
    data = {
        "format": FORMAT,
        "compatible": compatible(variant),
        "version": ident.version,
        "image_digest": ident.image_digest,
        "min_from_version": slots.check_version(min_from, "--min-from-version"),
        "images": {
            key: {"sha256": sha256_file(path), "size": path.stat().st_size}
            for key, path in images.items()
        },
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def sign(data: Path, key: Path, out: Path) -> None:
    """Raw Ed25519 signature of `data`'s bytes with `key` (PEM private key), by openssl."""
    if not key.is_file():
        die(f"signing key not found: {key}", hint="--key PATH to an Ed25519 private key (PEM)")
    run(["openssl", "pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", data, "-out", out])
    if out.stat().st_size != SIGNATURE_BYTES:
        die(f"{key}: not an Ed25519 key (signature of {out.stat().st_size} bytes, not 64)")


def verify(data: Path, signature: Path, public_key: Path) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `data` (openssl decides)."""
    res = run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            public_key,
            "-rawin",
            "-in",
            data,
            "-sigfile",
            signature,
        ],
        check=False,
    )
    return res.returncode == 0


def write_tar(members: list[tuple[str, Path]], out: Path) -> None:
    """An uncompressed ustar archive of `members` in order, every header fixed."""
    epoch = source_date_epoch()
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, path in members:
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mtime = epoch
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)


def make(
    image_dir: Path,
    out: Path,
    *,
    key: Path,
    variant: str = "production",
    version: str | None = None,
    min_from: str = DEFAULT_MIN_FROM,
    root: Path | None = None,
    agent: Path | None = None,
) -> dict[str, object]:
    """The signed bundle of the build in `image_dir` (layers optionally replaced); returns
    the manifest as data."""
    if not out.parent.is_dir():
        die(f"--out {out}: directory {out.parent} does not exist")
    root = root or image_dir / "root.squashfs"
    agent = agent or image_dir / "agent.squashfs"
    initrd = image_dir / build.INITRDS[compatible(variant).rsplit("/", 1)[-1]]
    for need in (root, agent, initrd, image_dir / "vmlinuz", image_dir / "image.json"):
        if not need.is_file():
            die(f"{need} missing", hint="build first (bazel build //images:appliance)")
    built = build.read_identity(image_dir / "image.json")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work = Path(tmp)
        images: dict[str, Path] = {"root": work / "root.img", "agent": work / "agent.img"}
        # Each layer as the device opens it: its squashfs with its dm-verity tree (a given
        # plain squashfs gets one here; the build's own come out byte for byte the same).
        hashes = {
            r: verity.reformat_layer(src, images[r])
            for r, src in zip(verity.ROLES, (root, agent), strict=True)
        }
        ident = slots.Identity(
            slots.check_version(version, "--version") if version else built.version,
            slots.image_digest(images["root"], images["agent"]),
        )
        base = f"{disk.DEFAULT_CMDLINE} {verity.cmdline_args(hashes)}"
        for slot in slots.SLOTS:
            uki = work / f"uki-{slot}.efi"
            disk.build_uki(
                image_dir / "vmlinuz",
                initrd,
                ident.cmdline(base, slot),
                slots.osrel(rootfs.os_release(), ident.version),
                uki,
            )
            signing.sign(uki)  # before the manifest takes its sha256
            images[f"uki-{slot}"] = uki
        (work / "manifest.json").write_bytes(manifest(variant, ident, min_from, images))
        sign(work / "manifest.json", key, work / "manifest.sig")
        write_tar(
            [
                ("manifest.json", work / "manifest.json"),
                ("manifest.sig", work / "manifest.sig"),
                *[(MEMBERS[k], images[k]) for k in MEMBERS],
            ],
            out,
        )
        data: dict[str, object] = json.loads((work / "manifest.json").read_bytes())
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle command's flags (`sennet_image bundle`)."""
    p.add_argument(
        "--image", type=Path, default=build.REPO / "build" / "image", help="a build's artefacts"
    )
    p.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    p.add_argument(
        "--key",
        type=Path,
        default=DEV_KEY,
        help="Ed25519 private key (PEM); default: the development key (tests only)",
    )
    p.add_argument("--variant", choices=disk.VARIANTS, default="production")
    p.add_argument("--version", help="the version the bundle installs (default: the build's)")
    p.add_argument(
        "--min-from-version",
        default=DEFAULT_MIN_FROM,
        help=f"oldest running version that may install it (default {DEFAULT_MIN_FROM})",
    )
    p.add_argument("--root-layer", type=Path, help="use this root layer instead of the build's")
    p.add_argument("--agent-layer", type=Path, help="use this agent layer instead of the build's")


def main(args: argparse.Namespace) -> int:
    """Write the bundle; log its version, digest and size."""
    data = make(
        args.image.resolve(),
        args.out.resolve(),
        key=args.key,
        variant=args.variant,
        version=args.version,
        min_from=args.min_from_version,
        root=args.root_layer,
        agent=args.agent_layer,
    )
    if args.key.resolve() == DEV_KEY:
        log("bundle_signed_with_development_key", note="tests only: devices trust it by default")
    log(
        "bundle_written",
        out=args.out,
        version=data["version"],
        image_digest=data["image_digest"],
        mib=f"{args.out.stat().st_size / 2**20:.1f}",
    )
    return 0
