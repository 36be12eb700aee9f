"""The update keyring baked into the root: the public keys a device accepts bundles from.

`/usr/share/sennet/update-keys/*.pem` in the root layer. By default the
development key (images/keys/dev/update.pem: tests only, its private half is in
the repository); a site bakes its own with `SENNET_UPDATE_KEYRING=DIR` (every
`*.pem` in DIR; several keys = a rotation window). Each key is checked with
openssl to be an Ed25519 public key, so a private key or a typo never ships.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sennet_image.proc import die, run

IMAGES_DIR = Path(__file__).resolve().parent.parent
DEV_KEYRING = IMAGES_DIR / "keys" / "dev"
KEYRING_DIR = "usr/share/sennet/update-keys"


def sources() -> list[Path]:
    """The public keys to bake in: SENNET_UPDATE_KEYRING's *.pem, else the development key."""
    given = os.environ.get("SENNET_UPDATE_KEYRING", "")
    if not given:
        return [DEV_KEYRING / "update.pem"]
    keyring = Path(given)
    if not keyring.is_dir():
        die(f"SENNET_UPDATE_KEYRING={given}: not a directory")
    keys = sorted(keyring.glob("*.pem"))
    if not keys:
        die(f"SENNET_UPDATE_KEYRING={given}: no *.pem public key in it")
    return keys


def check_public_key(pem: Path) -> None:
    """Stop unless `pem` is an Ed25519 public key (never a private key)."""
    if "PRIVATE KEY" in pem.read_text(errors="replace"):
        die(f"{pem}: a private key; the keyring takes public keys only")
    res = run(["openssl", "pkey", "-pubin", "-in", pem, "-noout", "-text_pub"], check=False)
    if res.returncode != 0 or not res.stdout.decode().startswith("ED25519 Public-Key"):
        die(f"{pem}: not an Ed25519 public key (PEM)")


def install(root: Path) -> list[str]:
    """Copy the keyring into the root tree (0644); returns the file names."""
    dest = root / KEYRING_DIR
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for pem in sources():
        check_public_key(pem)
        shutil.copyfile(pem, dest / pem.name)
        (dest / pem.name).chmod(0o644)
        names.append(pem.name)
    return names
