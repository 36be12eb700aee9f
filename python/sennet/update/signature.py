"""Ed25519 signature check of manifest.json with Debian's openssl (`pkeyutl -verify -rawin`).

No crypto is done in Python: the image carries the `openssl` package, and the
bundle is signed by `images/make-bundle` with the same tool. Every `*.pem` in
the keyring is tried (several keys = a rotation window); one match is enough.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from sennet.update.errors import Refused

SIGNATURE_BYTES = 64  # raw Ed25519


def keyring(directory: Path) -> list[Path]:
    """The public keys, in name order; none at all is a refusal (nothing could be trusted)."""
    keys = sorted(p for p in directory.glob("*.pem") if p.is_file()) if directory.is_dir() else []
    if not keys:
        raise Refused("no_keys", f"no *.pem public key in {directory}")
    return keys


def verify(manifest: bytes, sig: bytes, keys: list[Path]) -> Path:
    """The key that verifies `sig` over `manifest`; `Refused(signature)` when none does."""
    if len(sig) != SIGNATURE_BYTES:
        raise Refused("signature", f"manifest.sig is {len(sig)} bytes, not {SIGNATURE_BYTES}")
    with tempfile.TemporaryDirectory(prefix="sennet-update-") as tmp:
        mpath, spath = Path(tmp) / "manifest.json", Path(tmp) / "manifest.sig"
        mpath.write_bytes(manifest)
        spath.write_bytes(sig)
        for key in keys:
            done = subprocess.run(
                [
                    *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(key), "-rawin"),
                    *("-in", str(mpath), "-sigfile", str(spath)),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return key
    names = ",".join(k.name for k in keys)
    raise Refused("signature", f"manifest.sig verifies with no key in the keyring ({names})")
