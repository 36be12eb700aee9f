"""Secure Boot signatures on the EFI binaries (the UKIs), with Debian's sbsigntool.

The build signs with the key and certificate named by `SENNET_SECUREBOOT_KEY` and
`SENNET_SECUREBOOT_CERT` (both, or neither); without them, with the snakeoil test
key that Debian's ovmf package ships and enrols in `OVMF_VARS_4M.snakeoil.fd`
(development and tests only: its private key is public, its passphrase is the
documented "snakeoil"). A site key must be an unencrypted PEM (sbsign cannot be
given a passphrase without a terminal).

`sbsign` signs with RSA PKCS#1 v1.5, which is deterministic, but OpenSSL's PKCS#7
code puts a signingTime attribute (the current time) among the signed
attributes, and sbsign has no option to leave it out; so it runs under Debian's
libfaketime with the clock frozen at SOURCE_DATE_EPOCH, and the same image and
key give the same bytes (tests/test_signing.py signs twice and compares). The
library is preloaded directly, not through the `faketime` wrapper: the wrapper
creates a POSIX semaphore named after its PID in the shared /dev/shm, and two
signing steps in parallel Bazel sandboxes (each its own PID namespace, so the same
small PIDs) collide on it ("sem_open: File exists"). The manifest records who
signed each binary, read back from the signature.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sennet_image.proc import die, run, source_date_epoch

SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
SNAKEOIL_SOURCE = "ovmf-snakeoil (development and tests only)"
# Debian's libfaketime (package libfaketime), in the build root or on the host.
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@dataclass(frozen=True)
class SigningKey:
    """A private key and its X.509 certificate (PEM), and where they came from."""

    key: Path
    cert: Path
    source: str  # "SENNET_SECUREBOOT_KEY" or SNAKEOIL_SOURCE


def signing_key() -> SigningKey:
    """The key the build signs with: the site's (environment) or the snakeoil test key."""
    key, cert = os.environ.get("SENNET_SECUREBOOT_KEY"), os.environ.get("SENNET_SECUREBOOT_CERT")
    if bool(key) != bool(cert):
        die("set both SENNET_SECUREBOOT_KEY and SENNET_SECUREBOOT_CERT, or neither")
    if key and cert:
        chosen = SigningKey(Path(key), Path(cert), "SENNET_SECUREBOOT_KEY")
    else:
        chosen = SigningKey(SNAKEOIL_KEY, SNAKEOIL_CERT, SNAKEOIL_SOURCE)
    for path in (chosen.key, chosen.cert):
        if not path.is_file():
            die(f"Secure Boot signing file missing: {path}", hint="apt-get install ovmf")
    return chosen


def sign(image: Path, key: SigningKey | None = None) -> None:
    """Sign the PE image in place (an Authenticode signature in its certificate table)."""
    key = key or signing_key()
    frozen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(source_date_epoch()))
    with tempfile.TemporaryDirectory() as tmp:
        # Copies: the tools run in the build root, which has its own /usr (no ovmf there).
        signed, private, cert = (Path(tmp) / n for n in (image.name, "signing.key", "cert.pem"))
        shutil.copyfile(key.cert, cert)
        if key.source == SNAKEOIL_SOURCE:  # encrypted with a published passphrase
            shutil.copyfile(key.key, Path(tmp) / "snakeoil.key")
            argv: list[str | Path] = ["-in", Path(tmp) / "snakeoil.key", "-passin", "pass:snakeoil"]
            run(["openssl", "pkey", *argv, "-out", private])
        else:
            shutil.copyfile(key.key, private)
        # `env` sets the preload for sbsign alone, inside the build root when there is one.
        faked = ["env", f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME={frozen}"]
        sbsign: list[str | Path] = [*faked, "sbsign", "--key", private]
        run([*sbsign, "--cert", cert, "--output", signed, image])
        shutil.copyfile(signed, image)


def signer(image: Path) -> str:
    """The subject of the certificate that signed `image` ("" if unsigned), via sbverify."""
    res = run(["sbverify", "--list", image], check=False)
    text = res.stdout.decode(errors="replace")
    m = re.search(r"^\s*-?\s*subject:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def verify(image: Path, cert: Path) -> bool:
    """True if `image` carries a valid signature by `cert` (sbverify)."""
    with tempfile.TemporaryDirectory() as tmp:  # a copy the build root's sbverify can read
        shutil.copyfile(cert, Path(tmp) / "cert.pem")
        return (
            run(["sbverify", "--cert", Path(tmp) / "cert.pem", image], check=False).returncode == 0
        )
