"""Fetch pinned inputs for a build without Bazel, verified by sha256, cached by sha256.

Bazel fetches the same files through deps.bzl's repository rules; this is the
path for `images/build` by hand and for the reproducibility check's
pre-flight. A mismatch stops the build naming the input and both hashes.
Offline (the air-gap kit): SENNET_DISTDIR names a flat directory of the pinned
files by file name, the same directory Bazel's `--distdir` takes; a file found
there is used only if its sha256 is the pinned one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

from sennet_image.fsutil import sha256_file
from sennet_image.lock import DebPin, WheelPin
from sennet_image.mirrors import deb_url, wheel_urls
from sennet_image.proc import die, log

CACHE = Path(__file__).resolve().parent.parent.parent / "build" / "cache"


def fetch(pin: DebPin | WheelPin, cache: Path = CACHE) -> Path:
    """Return a local, verified copy of the pinned file, downloading it if needed."""
    dest = cache / pin.sha256 / pin.filename
    if dest.is_file():
        return dest
    distdir = os.environ.get("SENNET_DISTDIR", "")
    local = Path(distdir) / pin.filename if distdir else None
    if local is not None and local.is_file():
        if sha256_file(local) != pin.sha256:
            die(f"{local}: sha256 {sha256_file(local)}, the lock wants {pin.sha256} ({pin.name})")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
        return dest
    urls = (
        [deb_url(pin.archive, pin.path)]
        if isinstance(pin, DebPin)
        else wheel_urls(pin.name, pin.filename)
    )
    if not urls:
        die(f"no source serves {pin.filename}", hint="set SENNET_WHEEL_BASE or pip's index")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    err = ""
    for url in urls:
        try:
            log("fetch", input=pin.name, version=pin.version, file=pin.filename)
            with urllib.request.urlopen(url, timeout=120) as resp, tmp.open("wb") as out:
                h = hashlib.sha256()
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            err = str(exc)
            continue
        if h.hexdigest() != pin.sha256:
            tmp.unlink()
            die(
                f"input {pin.name} {pin.version} ({pin.filename}) has sha256 {h.hexdigest()}, "
                f"the lock wants {pin.sha256}",
                hint="tampered or moved: run `images/lock-update --only-if-gone` to re-pin",
            )
        tmp.rename(dest)
        return dest
    die(
        f"could not download {pin.filename}: {err}",
        hint="gone from the registry? `images/lock-update --only-if-gone` re-pins loudly",
    )
