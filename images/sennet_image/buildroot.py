"""The pinned build root: the build's tools from locked debs, not from the build host.

`buildroot.lock.json` pins clang, mksquashfs, mkfs.fat, mtools, sfdisk, objcopy,
the EFI stub, qemu-img, python3.11 and their dependency closure, by sha256, like
the image's own inputs. `extract` unpacks them (`dpkg-deb -x`: files only, no
maintainer script runs) into a directory shaped like Debian 12's merged /usr;
`proc.run` then runs every build tool inside it (see `proc.enter_argv`): in a
private mount namespace the root's /usr and /etc are bind-mounted over the
host's, so the tool, every library it loads, the headers clang includes and the
data files it reads come from the lock, while the work directories (everything
outside /usr and /etc) stay where they are.

What the host still provides (the bootstrap, recorded in the manifest): python3
running this package, `dpkg-deb` to unpack the root, and util-linux's `unshare`
and `mount` with `sh` to enter it. The plain build keeps one root per lock digest
under build/buildroot/; Bazel makes it once per output base as the repository
@sennet_buildroot (images/bazel/buildroot.bzl).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from sennet_image import lock
from sennet_image.fsutil import sha256_file
from sennet_image.lock import DebPin
from sennet_image.proc import BUILD_ROOT_ENV, die, log, run

CACHE = Path(__file__).resolve().parent.parent.parent / "build" / "buildroot"
STAMP = "buildroot.stamp"
# Top-level directories Debian 12 merges into /usr (its packages still ship some files there).
MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def digest(pins: list[DebPin]) -> str:
    """One name for the whole root: sha256 over the sorted sha256 of every deb in it."""
    return hashlib.sha256("\n".join(sorted(p.sha256 for p in pins)).encode()).hexdigest()


def _merge_usr(root: Path) -> None:
    """Move /bin, /sbin, /lib* into /usr and leave the symlinks Debian 12's usrmerge leaves,
    so that bind-mounting the root's /usr brings every file of the root along."""
    for name in MERGED:
        top = root / name
        if top.is_symlink() or not top.exists():
            continue
        # /sbin's files go to usr/sbin, as usrmerge does
        target = root / "usr" / name
        for src in sorted(top.rglob("*"), key=lambda p: len(p.parts)):
            dest = target / src.relative_to(top)
            if src.is_dir() and not src.is_symlink():
                dest.mkdir(parents=True, exist_ok=True)
            elif not dest.exists() and not dest.is_symlink():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(src, dest)
        shutil.rmtree(top)
        top.symlink_to(f"usr/{name}")


def extract(debs: list[Path], dest: Path, stamp: str) -> Path:
    """Unpack `debs` (files only) into a new root at `dest`; writes the stamp last, so a root
    that has one is complete."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for deb in sorted(debs, key=lambda p: p.name):
        run(["dpkg-deb", "-x", deb, dest], host=True)
    _merge_usr(dest)
    (dest / "etc").mkdir(exist_ok=True)
    sh = dest / "usr" / "bin" / "sh"
    if not sh.exists() and (dest / "usr" / "bin" / "dash").exists():
        sh.symlink_to("dash")  # what dash's maintainer script would make
    (dest / STAMP).write_text(stamp + "\n")
    return dest


def ensure(cache: Path = CACHE) -> Path:
    """The plain build's root for the current lock: extracted once per lock digest."""
    from sennet_image.fetch import fetch

    pins = lock.load_debs(lock.BUILDROOT_LOCK)
    key = digest(pins)
    root = cache / key
    stamp = root / STAMP
    if stamp.is_file() and stamp.read_text().strip() == key:
        return root
    debs = [fetch(p) for p in pins]
    log("buildroot_extract", packages=len(pins), digest=key[:16])
    tmp = cache / f"{key}.partial"
    extract(debs, tmp, key)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def locate(marker: Path) -> Path:
    """The root a marker names: the root itself, or its stamp file (what a Bazel action gets:
    a symlink into the @sennet_buildroot repository)."""
    path = marker.resolve()
    root = path.parent if path.is_file() else path
    if not (root / STAMP).is_file() or not (root / "usr").is_dir():
        die(f"not a build root: {marker} (no {STAMP} beside usr/)")
    return root


def activate(root: Path) -> None:
    """Make `root` the build root of this process and its children (proc.run enters it).
    Files the build reads itself rather than through a tool (the EFI stub, systemd-boot) are
    taken from the root too (`disk.efi_binary`), so a host without systemd-boot-efi builds
    the same UKI and ESP."""
    os.environ[BUILD_ROOT_ENV] = str(root)


def main(argv: list[str]) -> int:
    """`python3 -m sennet_image.buildroot DEST DEB...`: what the Bazel repository rule runs
    (the stamp is the same digest the plain build computes from the lock)."""
    if len(argv) < 2:
        print("usage: python3 -m sennet_image.buildroot DEST DEB...", file=sys.stderr)
        return 2
    debs = [Path(d) for d in argv[1:]]
    sums = "\n".join(sorted(sha256_file(d) for d in debs))
    extract(debs, Path(argv[0]), hashlib.sha256(sums.encode()).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
