"""Bundles shaped like `images/make-bundle`'s, for control-plane and agent tests.

The control plane and the agent never check a bundle's signature (the device's
updater does, with openssl, before it writes anything), so host tests need only
the container's shape: an uncompressed tar whose first member is manifest.json.
The signature member here is 64 zero bytes and says so; tests of signing and
verification live with the updater and the image tooling.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path


def make_bundle(path: Path, version: str, payload_bytes: int = 300_000, seed: int = 1) -> str:
    """Write a bundle with `payload_bytes` of seeded random root image; returns its sha256."""
    rng = random.Random(seed)
    payload = rng.randbytes(payload_bytes)
    manifest = {
        "format": "sennet-bundle/1",
        "compatible": "sennet-appliance/x86_64/test",
        "version": version,
        "image_digest": hashlib.sha256(payload).hexdigest(),
        "min_from_version": "0.1.0",
        "images": {"root": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}},
    }
    members = [
        ("manifest.json", json.dumps(manifest, sort_keys=True).encode()),
        ("manifest.sig", bytes(64)),  # not a signature: see the module docstring
        ("root.img", payload),
    ]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()
