"""Secure Boot signing with sbsign: reproducible bytes, sbverify, the key choice.

Real sbsign/sbverify/openssl on a real EFI binary (systemd-boot's EFI stub, the
base of every UKI); firmware enforcement is in test_verified_boot.py (integration).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import disk, signing

SNAKEOIL_SUBJECT = "/C=US/ST=Colorado/L=Fort Collins/O=SnakeOil"


@pytest.fixture
def efi(tmp_path: Path) -> Path:
    stub = disk.efi_binary("linuxx64.efi.stub")
    if not stub.is_file():
        pytest.fail(f"EFI stub missing: {stub} (scripts/bootstrap.sh installs it)")
    path = tmp_path / "stub.efi"
    shutil.copyfile(stub, path)
    return path


@pytest.fixture(autouse=True)
def _no_site_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENNET_SECUREBOOT_KEY", raising=False)
    monkeypatch.delenv("SENNET_SECUREBOOT_CERT", raising=False)


def test_signing_twice_gives_the_same_bytes_and_sbverify_accepts_the_snakeoil_key(
    efi: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.efi"
    shutil.copyfile(efi, again)
    assert signing.signer(efi) == ""
    signing.sign(efi)
    time.sleep(1.1)  # a signing time taken from the clock would now differ
    signing.sign(again)
    assert efi.read_bytes() == again.read_bytes()
    assert signing.verify(efi, signing.SNAKEOIL_CERT)
    assert signing.signer(efi) == SNAKEOIL_SUBJECT
    assert signing.signing_key().source.startswith("ovmf-snakeoil")


def test_signings_in_parallel_pid_namespaces_do_not_collide(efi: Path, tmp_path: Path) -> None:
    """Bazel runs the disk and bundle steps at once, each in a sandbox with its own PID
    namespace; the `faketime` wrapper's per-PID semaphore in the shared /dev/shm made
    the second fail ("sem_open: File exists"). Both signings must succeed, identically."""
    copies = [tmp_path / f"p{i}.efi" for i in range(3)]
    for copy in copies:
        shutil.copyfile(efi, copy)
    code = (
        "import sys; from pathlib import Path; from sennet_image import signing; "
        "signing.sign(Path(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen(
            ["unshare", "--pid", "--fork", sys.executable, "-c", code, str(copy)],
            stderr=subprocess.PIPE,
        )
        for copy in copies
    ]
    errors = [p.communicate()[1].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert copies[0].read_bytes() == copies[1].read_bytes() == copies[2].read_bytes()
    assert signing.signer(copies[0]) == SNAKEOIL_SUBJECT


def test_a_byte_changed_after_signing_fails_sbverify(efi: Path) -> None:
    signing.sign(efi)
    data = bytearray(efi.read_bytes())
    data[len(data) // 3] ^= 0x01
    efi.write_bytes(bytes(data))
    assert not signing.verify(efi, signing.SNAKEOIL_CERT)


def test_a_site_key_from_the_environment_signs_instead(
    efi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = tmp_path / "db.key", tmp_path / "db.pem"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", "/CN=Sennet site db test", "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SENNET_SECUREBOOT_KEY", str(key))
    monkeypatch.setenv("SENNET_SECUREBOOT_CERT", str(cert))
    assert signing.signing_key().source == "SENNET_SECUREBOOT_KEY"
    signing.sign(efi)
    assert signing.signer(efi) == "/CN=Sennet site db test"
    assert signing.verify(efi, cert)
    assert not signing.verify(efi, signing.SNAKEOIL_CERT)


def test_half_a_site_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENNET_SECUREBOOT_KEY", "/nonexistent/db.key")
    with pytest.raises(UserError, match="set both SENNET_SECUREBOOT_KEY and"):
        signing.signing_key()
