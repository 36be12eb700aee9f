"""The update bundle: member order, reproducible bytes, right digests, an openssl signature.

Real objcopy (on systemd-boot's stub), real openssl, sbsign and veritysetup, and
real tar headers; the kernel and initramfs are small stand-in files (the bundle
treats them as opaque bytes) and the layers small real squashfs images, so this
runs in seconds without a build.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from sennet.common.errors import UserError
from sennet_image import build, bundle, cli, signing

DEV_PEM = Path(bundle.__file__).resolve().parent.parent / "keys" / "dev" / "update.pem"
ORDER = ["manifest.json", "manifest.sig", "uki-a.efi", "uki-b.efi", "root.img", "agent.img"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A build's artefacts as far as make-bundle reads them."""
    d = tmp_path / "image"
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"MZ kernel stand-in " * 1000)
    (d / "initrd.img").write_bytes(b"production initramfs " * 500)
    (d / "initrd-test.img").write_bytes(b"test initramfs " * 500)
    for layer, text in (("root", b"root layer " * 3000), ("agent", b"agent layer " * 700)):
        # as the build makes them: a squashfs with its dm-verity tree, the root hash beside
        _tree(tmp_path / layer, text)
        build.verity_layer(tmp_path / layer, d / f"{layer}.squashfs", d / f"{layer}.roothash")
    (d / "image.json").write_text('{"image_digest": "' + "0" * 64 + '", "version": "0.1.0"}\n')
    return d


def _tree(path: Path, text: bytes) -> Path:
    path.mkdir()
    (path / "file").write_bytes(text)
    return path


def _verity_ok(image: Path, root_hash: str) -> bool:
    """veritysetup's own check of `image`'s appended tree against `root_hash`."""
    offset = (image.stat().st_size // 4096 - _tree_blocks(image)) * 4096
    res = subprocess.run(
        [
            *("veritysetup", "verify", f"--hash-offset={offset}", str(image), str(image)),
            root_hash,
        ],
        capture_output=True,
        check=False,
    )
    return res.returncode == 0


def _tree_blocks(image: Path) -> int:
    """Blocks after the squashfs (its padded bytes_used): the superblock and the tree."""
    used = int.from_bytes(image.read_bytes()[40:48], "little")
    return image.stat().st_size // 4096 - -(-used // 4096)


def _cmdarg(cmdline: str, name: str) -> str:
    return next(w.split("=", 1)[1] for w in cmdline.split() if w.startswith(name + "="))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def _section(uki: bytes, name: str, tmp: Path) -> str:
    (tmp / "uki.efi").write_bytes(uki)
    subprocess.run(
        ["objcopy", "-O", "binary", f"--only-section={name}", tmp / "uki.efi", tmp / "sec"],
        check=True,
    )
    return (tmp / "sec").read_bytes().rstrip(b"\0").decode()


def test_members_are_in_contract_order_with_fixed_headers(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.bundle"
    cli.main(["bundle", "--image", str(image_dir), "--out", str(out)])
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ORDER
    assert {(m.mtime, m.uid, m.gid, m.mode, m.type) for m in members} == {
        (1700000000, 0, 0, 0o644, tarfile.REGTYPE)
    }
    # ustar, uncompressed: the magic sits at byte 257 of the first header
    assert out.read_bytes()[257:263] == b"ustar\0"


def test_the_same_inputs_give_the_same_bytes(image_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.bundle", tmp_path / "b.bundle"
    bundle.make(image_dir, a, key=bundle.DEV_KEY)
    bundle.make(image_dir, b, key=bundle.DEV_KEY)
    assert a.read_bytes() == b.read_bytes()


def test_manifest_names_each_member_by_sha256_and_size(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.bundle"
    bundle.make(image_dir, out, key=bundle.DEV_KEY, version="0.2.0")
    files = _members(out)
    m = json.loads(files["manifest.json"])
    root, agent = (
        (image_dir / "root.squashfs").read_bytes(),
        (image_dir / "agent.squashfs").read_bytes(),
    )
    digest = _sha(f"sennet-slot/1\nroot {_sha(root)}\nagent {_sha(agent)}\n".encode())
    assert m == {
        "format": "sennet-bundle/1",
        "compatible": "sennet-appliance/x86_64/production",
        "version": "0.2.0",
        "image_digest": digest,
        "min_from_version": "0.1.0",
        "images": {
            "uki-a": {"sha256": _sha(files["uki-a.efi"]), "size": len(files["uki-a.efi"])},
            "uki-b": {"sha256": _sha(files["uki-b.efi"]), "size": len(files["uki-b.efi"])},
            "root": {"sha256": _sha(root), "size": len(root)},
            "agent": {"sha256": _sha(agent), "size": len(agent)},
        },
    }
    # the build's layers (tree appended) go in byte for byte
    assert files["root.img"] == root and files["agent.img"] == agent
    hashes = {r: (image_dir / f"{r}.roothash").read_text().strip() for r in ("root", "agent")}
    # each UKI boots its own slot, names what the bundle holds and carries the layers'
    # verity root hashes, and is signed with the build's Secure Boot key (snakeoil here)
    for slot in ("a", "b"):
        uki = tmp_path / f"uki-{slot}.efi"
        uki.write_bytes(files[f"uki-{slot}.efi"])
        assert signing.verify(uki, signing.SNAKEOIL_CERT)
        cmdline = _section(files[f"uki-{slot}.efi"], ".cmdline", tmp_path)
        assert cmdline.endswith(
            f" sennet.verity.root={hashes['root']} sennet.verity.agent={hashes['agent']}"
            f" sennet.slot={slot} sennet.version=0.2.0 sennet.image_digest={digest}"
        )
        osrel = _section(files[f"uki-{slot}.efi"], ".osrel", tmp_path)
        assert "IMAGE_ID=sennet\nIMAGE_VERSION=0.2.0\n" in osrel
        assert _section(files[f"uki-{slot}.efi"], ".initrd", tmp_path).startswith(
            "production initramfs"
        )


def test_signature_verifies_with_openssl_and_fails_with_another_key(
    image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "u.bundle"
    bundle.make(image_dir, out, key=bundle.DEV_KEY)
    files = _members(out)
    (tmp_path / "manifest.json").write_bytes(files["manifest.json"])
    (tmp_path / "manifest.sig").write_bytes(files["manifest.sig"])
    assert len(files["manifest.sig"]) == 64

    def openssl_verify(pem: Path, manifest: Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin"),
                *("-in", str(manifest), "-sigfile", str(tmp_path / "manifest.sig")),
            ],
            capture_output=True,
            check=False,
        )

    assert openssl_verify(DEV_PEM, tmp_path / "manifest.json").returncode == 0
    other_key, other_pem = tmp_path / "other.key", tmp_path / "other.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(other_key)], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(other_key), "-pubout", "-out", str(other_pem)], check=True
    )
    assert openssl_verify(other_pem, tmp_path / "manifest.json").returncode != 0
    # one byte of the manifest changed: the development key's signature no longer holds
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(files["manifest.json"].replace(b'"0.1.0"', b'"0.0.9"', 1))
    assert openssl_verify(DEV_PEM, tampered).returncode != 0
    assert bundle.verify(tmp_path / "manifest.json", tmp_path / "manifest.sig", DEV_PEM)
    assert not bundle.verify(tampered, tmp_path / "manifest.sig", DEV_PEM)
    # signed with the other key, the bundle verifies with that key's public half only
    bundle.make(image_dir, out, key=other_key)
    (tmp_path / "manifest.sig").write_bytes(_members(out)["manifest.sig"])
    assert openssl_verify(other_pem, tmp_path / "manifest.json").returncode == 0
    assert openssl_verify(DEV_PEM, tmp_path / "manifest.json").returncode != 0


def test_a_replaced_layer_changes_its_digest_and_the_image_digest(
    image_dir: Path, tmp_path: Path
) -> None:
    # a plain squashfs (no hash tree), as a test or a site makes one with mksquashfs
    broken = tmp_path / "broken-agent.squashfs"
    src = _tree(tmp_path / "broken", b"an agent that cannot attach")
    subprocess.run(
        ["mksquashfs", str(src), str(broken), "-noappend", "-quiet", "-all-root", "-no-progress"],
        check=True,
    )
    good, bad = tmp_path / "good.bundle", tmp_path / "bad.bundle"
    bundle.make(image_dir, good, key=bundle.DEV_KEY)
    bundle.make(image_dir, bad, key=bundle.DEV_KEY, agent=broken)
    g = json.loads(_members(good)["manifest.json"])
    b = json.loads(_members(bad)["manifest.json"])
    agent = _members(bad)["agent.img"]
    assert b["images"]["agent"] == {"sha256": _sha(agent), "size": len(agent)}
    assert b["images"]["root"] == g["images"]["root"]
    assert b["image_digest"] != g["image_digest"]
    # the bundle's agent.img is that squashfs with a verity tree appended, and the UKIs carry
    # its root hash (veritysetup checks the tree against it), not the build's agent's
    plain = broken.read_bytes()
    assert agent[: len(plain)] == plain and len(agent) > len(plain)
    (tmp_path / "agent.img").write_bytes(agent)
    for slot in ("a", "b"):
        cmdline = _section(_members(bad)[f"uki-{slot}.efi"], ".cmdline", tmp_path)
        agent_hash = _cmdarg(cmdline, "sennet.verity.agent")
        assert agent_hash != (image_dir / "agent.roothash").read_text().strip()
        assert _verity_ok(tmp_path / "agent.img", agent_hash)
        assert not _verity_ok(tmp_path / "agent.img", "0" * 64)
        root_hash = (image_dir / "root.roothash").read_text().strip()
        assert _cmdarg(cmdline, "sennet.verity.root") == root_hash


def test_test_variant_bundle_carries_the_test_initramfs(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.bundle"
    data = bundle.make(image_dir, out, key=bundle.DEV_KEY, variant="test", min_from="0.1.5")
    assert data["compatible"] == "sennet-appliance/x86_64/test"
    assert data["min_from_version"] == "0.1.5"
    uki = _members(out)["uki-a.efi"]
    assert _section(uki, ".initrd", tmp_path).startswith("test initramfs")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "0.2.0;reboot"}, "--version: '0.2.0;reboot' is not a version"),
        ({"min_from": "latest"}, "--min-from-version: 'latest' is not a version"),
        (
            {"key": Path("/nonexistent/update.key")},
            "signing key not found: /nonexistent/update.key",
        ),
    ],
)
def test_bad_input_is_one_clear_error(
    image_dir: Path, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"key": bundle.DEV_KEY, **kwargs}
    out = tmp_path / "x.bundle"
    with pytest.raises(UserError) as e:
        bundle.make(image_dir, out, **args)  # type: ignore[arg-type]
    assert str(e.value).startswith(message)
    assert not out.exists()


def test_an_output_in_a_missing_directory_is_one_clear_error(
    image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nowhere" / "x.bundle"
    with pytest.raises(UserError) as e:
        bundle.make(image_dir, out, key=bundle.DEV_KEY)
    assert e.value.message == f"--out {out}: directory {out.parent} does not exist"


def test_a_key_that_is_not_ed25519_is_refused(image_dir: Path, tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.key"
    subprocess.run(
        [
            *("openssl", "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024"),
            *("-out", str(rsa)),
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(UserError):
        bundle.make(image_dir, tmp_path / "x.bundle", key=rsa)
    assert not (tmp_path / "x.bundle").exists()


@pytest.mark.integration
def test_a_bundle_of_the_real_build_carries_its_ukis_and_layers_byte_for_byte(
    tmp_path: Path,
) -> None:
    """make-bundle rebuilds the UKIs from the kernel and initramfs: with no override they are
    the build's own uki-a.efi and uki-b.efi, and the digest is the build's image.json's."""
    built = Path(__file__).resolve().parent.parent.parent / "bazel-bin" / "images"
    if not (built / "image.json").is_file():
        pytest.skip("no built image: bazel build //images:appliance")
    out = tmp_path / "real.bundle"
    data = bundle.make(built, out, key=bundle.DEV_KEY)
    files = _members(out)
    ident = json.loads((built / "image.json").read_text())
    assert (data["version"], data["image_digest"]) == (ident["version"], ident["image_digest"])
    assert files["uki-a.efi"] == (built / "uki-a.efi").read_bytes()
    assert files["uki-b.efi"] == (built / "uki-b.efi").read_bytes()
    assert files["root.img"] == (built / "root.squashfs").read_bytes()
    assert files["agent.img"] == (built / "agent.squashfs").read_bytes()
