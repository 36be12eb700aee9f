"""The air-gap kit: everything a site without network needs, in one directory, signed.

    images/airgap-kit --out DIR [--image-dir bazel-bin/images] [--key KEY.pem]

Layout of DIR:
    image/         the built artefacts, manifest.json (and sbom.spdx.json if the build made one)
    update/        the build's signed update bundle (make-bundle's; --bundle carries another)
    wheels/        the control plane (sennet) and every dependency at the pinned constraints
    deploy/        the Prometheus and Grafana files
    distdir/       the build's repository cache, flat by file name: every pinned deb and
                   wheel of the image and every deb of the build root (SENNET_DISTDIR for
                   images/build, or Bazel's --distdir)
    source.tar     the source tree (`git archive HEAD`)
    README.md      for the far side: verify, install the control plane, rebuild
    SHA256SUMS     sha256 of every file above, and SHA256SUMS.sig, its raw Ed25519 signature
                   (`openssl pkeyutl -sign -rawin`)

The development key (images/keys/dev/update.key) signs unless `--key` names the site's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sennet_image import build, lock
from sennet_image.fetch import fetch
from sennet_image.fsutil import sha256_file
from sennet_image.lock import DebPin, WheelPin
from sennet_image.proc import die, log, run, step

REPO = Path(__file__).resolve().parent.parent.parent
DEV_KEY = REPO / "images" / "keys" / "dev" / "update.key"
README = Path(__file__).resolve().parent / "kit_readme.md"
# Files of an image build beyond build.ARTEFACTS that travel when present.
EXTRA_ARTEFACTS = ("manifest.json", "sbom.spdx.json", "kernel-release")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The kit's flags (`sennet_image kit`)."""
    p.add_argument("--out", type=Path, required=True, help="an empty or new directory")
    p.add_argument(
        "--image-dir",
        type=Path,
        help="the built artefacts (default: bazel-bin/images, else build/image)",
    )
    p.add_argument("--key", type=Path, default=DEV_KEY, help="Ed25519 private key (PEM)")
    p.add_argument("--python", default="python3", help="the interpreter whose pip downloads")
    p.add_argument("--bundle", type=Path, help="a signed update bundle to carry (make-bundle's)")


def _image_dir(given: Path | None) -> Path:
    for candidate in [given] if given else [REPO / "bazel-bin/images", REPO / "build/image"]:
        if candidate is not None and (candidate / "manifest.json").is_file():
            return candidate
    die(
        f"no built image at {given or 'bazel-bin/images or build/image'} (no manifest.json)",
        hint="bazel build //images:appliance, or images/build, first",
    )


def copy_image(src: Path, dest: Path) -> None:
    """The artefacts and manifest, by name (a Bazel output is a read-only file or link)."""
    dest.mkdir(parents=True)
    for name in (*build.ARTEFACTS, *EXTRA_ARTEFACTS):
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)


def copy_inputs(dest: Path) -> int:
    """Every pinned file the build reads (image debs, wheels, build-root debs), verified."""
    dest.mkdir(parents=True)
    pins: list[DebPin | WheelPin] = [
        *lock.load_debs(),
        *lock.load_wheels(),
        *lock.load_debs(lock.BUILDROOT_LOCK),
    ]
    names = set()
    for pin in pins:
        path = fetch(pin)
        if path.name not in names:
            shutil.copyfile(path, dest / path.name)
            names.add(path.name)
    return len(names)


def download_wheels(python: str, dest: Path) -> None:
    """The control plane as a wheel, and its dependencies as pip resolves them under
    python/constraints.txt (for the interpreter the site installs with)."""
    dest.mkdir(parents=True)
    constraints = REPO / "python" / "constraints.txt"
    run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest, REPO / "python"], host=True)
    wheel = next(dest.glob("sennet-*.whl"))
    run(
        [python, "-m", "pip", "download", "-q", "--only-binary=:all:", "-c", constraints,
         "-d", dest, wheel],
        host=True,
        env={"HOME": str(Path.home())},
    )  # fmt: skip


def sign(sums: Path, key: Path) -> Path:
    """SHA256SUMS.sig: raw Ed25519 over the SHA256SUMS bytes (openssl 3, as the bundle)."""
    if not key.is_file():
        die(f"signing key missing: {key}", hint="--key KEY.pem (Ed25519, PEM)")
    sig = sums.with_name(sums.name + ".sig")
    run(
        ["openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key, "-in", sums, "-out", sig],
        host=True,
    )
    return sig


def write_sums(out: Path) -> Path:
    """SHA256SUMS in `sha256sum -c` form, every file under `out`, sorted."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("SHA256"))
    sums = out / "SHA256SUMS"
    sums.write_text("".join(f"{sha256_file(p)}  {p.relative_to(out)}\n" for p in files))
    return sums


def make(out: Path, image_dir: Path | None, key: Path, python: str, bundle: Path | None) -> Path:
    """Assemble the kit in `out` (which must not hold anything yet)."""
    if out.exists() and any(out.iterdir()):
        die(f"{out} is not empty", hint="give a new directory to --out")
    out.mkdir(parents=True, exist_ok=True)
    images = _image_dir(image_dir)
    with step("kit_image"):
        copy_image(images, out / "image")
    (out / "update").mkdir()
    if bundle is not None:
        shutil.copyfile(bundle, out / "update" / bundle.name)
    else:  # the build's own: what a site flashes, it can also update to
        from sennet_image import bundle as bundles

        with step("kit_bundle"):
            made = out / "update" / "sennet-production.bundle"
            bundles.make(images, made, key=key)
    with step("kit_inputs"):
        count = copy_inputs(out / "distdir")
    with step("kit_wheels"):
        download_wheels(python, out / "wheels")
    shutil.copytree(REPO / "deploy", out / "deploy")
    with step("kit_source"):
        run(["git", "-C", REPO, "archive", "--format=tar", "-o", out / "source.tar", "HEAD"],
            host=True)  # fmt: skip
    shutil.copyfile(README, out / "README.md")
    sig = sign(write_sums(out), key)
    log("kit_done", out=out, inputs=count, signature=sig.name)
    return out


def main(args: argparse.Namespace) -> int:
    """The kit command."""
    make(args.out.resolve(), args.image_dir, args.key.resolve(), args.python, args.bundle)
    return 0
