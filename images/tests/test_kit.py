"""The air-gap kit, end to end: made from the built image, verified, the control plane
installed from it into a fresh venv and started, the image rebuilt from it offline.

Marked `kit` (and `integration`): it needs a built image ($SENNET_IMAGE_DIR, as the test
command gives it after `bazel build //images:appliance`), root (network namespaces, the
build root) and, to make the kit, the registries the build already uses. The offline
rebuild is `images/check-reproducible --against` that image: the kit's source.tar (a
fresh clone's files), its distdir as the only source of inputs, in a network namespace
with nothing but `lo`; every artefact must be byte-identical to the original.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from sennet_image import kit

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.kit]


@pytest.fixture(scope="module")
def image_dir() -> Path:
    given = os.environ.get("SENNET_IMAGE_DIR", "")
    path = Path(given) if given else REPO / "bazel-bin" / "images"
    assert (path / "manifest.json").is_file(), f"no built image at {path} (SENNET_IMAGE_DIR)"
    return path


@pytest.fixture(scope="module")
def kit_dir(image_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "kit"
    return kit.make(out, image_dir, kit.DEV_KEY, "/usr/bin/python3", None)


def test_the_kit_is_complete_and_its_sums_verify_under_the_signature(kit_dir: Path) -> None:
    for path in ("image/appliance.raw", "image/manifest.json", "image/sbom.spdx.json",
                 "update/sennet-production.bundle", "source.tar", "README.md",
                 "deploy/README.md", "SHA256SUMS", "SHA256SUMS.sig"):  # fmt: skip
        assert (kit_dir / path).is_file(), path
    # the bundle is the build's: its manifest names the image digest the build recorded
    with tarfile.open(kit_dir / "update/sennet-production.bundle") as bundle:
        member = bundle.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    built = json.loads((kit_dir / "image/image.json").read_text())
    assert manifest["image_digest"] == built["image_digest"]
    assert len((kit_dir / "SHA256SUMS.sig").read_bytes()) == 64  # raw Ed25519
    assert list((kit_dir / "wheels").glob("sennet-*.whl"))
    assert list((kit_dir / "wheels").glob("grpcio-*.whl"))
    assert list((kit_dir / "distdir").glob("clang-14_*.deb"))  # the build root's too
    pem = REPO / "images" / "keys" / "dev" / "update.pem"
    verify = ["openssl", "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", str(pem),
              "-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig"]  # fmt: skip
    res = subprocess.run(verify, cwd=kit_dir, capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "Signature Verified Successfully" in res.stdout
    sums = subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=kit_dir,
                          check=False)  # fmt: skip
    assert sums.returncode == 0
    # one changed byte in a listed file, and the sums no longer pass
    tampered = kit_dir / "deploy" / "README.md"
    original = tampered.read_bytes()
    tampered.write_bytes(original + b"\n")
    try:
        res = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=kit_dir,
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert res.returncode == 1 and "deploy/README.md: FAILED" in res.stdout
    finally:
        tampered.write_bytes(original)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_control_plane_installs_offline_from_the_kit_and_serves(
    kit_dir: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True)
    # no network: only the kit's wheels can satisfy the install
    subprocess.run(
        ["unshare", "--net", "--", venv / "bin/pip", "install", "-q", "--no-index",
         "--find-links", kit_dir / "wheels", "sennet"],
        check=True,
    )  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen(
        [venv / "bin/sennet-controlplane", "--db", tmp_path / "cp.db", "serve",
         "--grpc-listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        why = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
        assert status == 200, why
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_image_rebuilt_from_the_kit_offline_is_byte_identical(
    kit_dir: Path, image_dir: Path
) -> None:
    res = subprocess.run(
        [REPO / "images" / "check-reproducible", "--against", image_dir,
         "--source", kit_dir / "source.tar", "--distdir", kit_dir / "distdir", "--offline"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "REPRODUCIBLE: all artefacts byte-identical" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 0
