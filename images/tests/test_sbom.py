"""The SPDX SBOM: licences read the way Debian and wheels state them, checksums of the very
files, valid per spdx-tools (the SPDX project's own validator), byte-reproducible; and for
the built image (integration): every pin listed, every artefact's digest right, the copy on
the ESP identical to the one beside the artefacts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sennet.common.errors import UserError
from sennet_image import lock, sbom
from sennet_image.lock import DebPin, WheelPin
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

REPO = Path(__file__).resolve().parent.parent.parent

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: demo

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: lib/*
Copyright: 2021 Someone Else
License: Expat or GPL-2

Files: doc/*
Copyright: none
License: public-domain

Files: src/parser.c
Copyright: 2019 Parser Person
License: GPL-3+ with Bison exception

License: public-domain
 The author places this work in the public domain.
"""


def _deb(tmp: Path, name: str, copyright_text: str) -> Path:
    tree = tmp / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\n"
        "Maintainer: Test <t@example.invalid>\nDescription: test\n"
    )
    doc = tree / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    out = tmp / f"{name}_1.0-1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def _wheel(tmp: Path, name: str, headers: str) -> Path:
    out = tmp / f"{name}-2.0-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"{name}-2.0.dist-info/METADATA", f"Name: {name}\nVersion: 2.0\n{headers}\n")
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inputs(tmp: Path, tamper: bool = False) -> sbom.Inputs:
    dep5 = _deb(tmp, "demo-dep5", DEP5)
    prose = _deb(tmp, "busybox-static", "This package was debianized by someone. GPL.\n")
    w1 = _wheel(tmp, "alpha", "License-Expression: Apache-2.0 AND BSD-2-Clause")
    w2 = _wheel(tmp, "beta", "License: 3-Clause BSD License")
    art = tmp / "agent.squashfs"
    art.write_bytes(b"agent layer bytes")
    bpf = tmp / "sennet_tc.bpf.o"
    bpf.write_bytes(b"\x7fELF bpf")
    loader = tmp / "sennet-early-attach"
    loader.write_bytes(b"\x7fELF x86-64")

    def pin(d: Path, n: str) -> DebPin:
        return DebPin(
            n,
            "1.0-1",
            "amd64",
            "debian",
            f"pool/main/x/{d.name}",
            "0" * 64 if tamper else _sha(d),
            d.stat().st_size,
            "root",
        )

    return sbom.inputs(
        [pin(dep5, "demo-dep5"), pin(prose, "busybox-static")],
        [WheelPin("alpha", "2.0", w1.name, _sha(w1)), WheelPin("beta", "2.0", w2.name, _sha(w2))],
        [dep5, prose, w1, w2],
        [art],
        [bpf, loader],
    )


def _validate(path: Path) -> None:
    messages = validate_full_spdx_document(parse_file(str(path)), "SPDX-2.3")
    assert [m.validation_message for m in messages] == []


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in doc["packages"]}


def test_licences_checksums_and_validity_of_a_document_made_from_real_debs_and_wheels(
    tmp_path: Path,
) -> None:
    inp = _inputs(tmp_path)
    out = tmp_path / "sbom.spdx.json"
    sbom.write(inp, out)
    _validate(out)
    doc = json.loads(out.read_text())
    pkgs = _by_name(doc)
    ref = "LicenseRef-demo-dep5-public-domain"
    assert pkgs["demo-dep5"]["licenseDeclared"] == (
        f"GPL-2.0-or-later AND (MIT OR GPL-2.0-only) AND {ref}"
        " AND GPL-3.0-or-later WITH Bison-exception-2.2"
    )
    texts = {e["licenseId"]: e["extractedText"] for e in doc["hasExtractedLicensingInfos"]}
    assert texts[ref] == "The author places this work in the public domain."
    # free-form copyright: the licence comes from images/sbom-licenses.toml
    assert pkgs["busybox-static"]["licenseDeclared"] == "GPL-2.0-only"
    assert pkgs["alpha"]["licenseDeclared"] == "Apache-2.0 AND BSD-2-Clause"
    assert pkgs["beta"]["licenseDeclared"] == "BSD-3-Clause"
    for pin, path in [*inp.debs, *inp.wheels]:
        assert pkgs[pin.name]["checksums"] == [{"algorithm": "SHA256", "checksumValue": _sha(path)}]
    assert pkgs["demo-dep5"]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/demo-dep5@1.0-1?arch=amd64"
    )
    assert pkgs["agent.squashfs"]["checksums"][0]["checksumValue"] == _sha(
        inp.artefacts["agent.squashfs"]
    )
    assert pkgs["sennet_tc.bpf.o"]["licenseDeclared"] == "GPL-2.0-only OR BSD-3-Clause"
    assert pkgs["sennet_tc.bpf.o"]["checksums"][1] == {
        "algorithm": "SHA256",
        "checksumValue": _sha(inp.bpf_objects[0]),
    }
    early = pkgs["sennet-early-attach"]  # the boot-time loader: our code, not an eBPF object
    assert (early["licenseDeclared"], early["primaryPackagePurpose"]) == (
        "Apache-2.0",
        "APPLICATION",
    )
    assert early["checksums"][1]["checksumValue"] == _sha(inp.bpf_objects[1])
    assert {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in doc["relationships"]
    } >= {
        ("SPDXRef-Artefact-agent.squashfs", "CONTAINS", "SPDXRef-BPF-sennet-tc.bpf.o"),
        ("SPDXRef-Artefact-agent.squashfs", "CONTAINS", "SPDXRef-BPF-sennet-early-attach"),
        ("SPDXRef-Package-sennet-appliance", "CONTAINS", "SPDXRef-Artefact-agent.squashfs"),
    }
    # same inputs, same bytes (creation time is SOURCE_DATE_EPOCH, namespace from content)
    again = tmp_path / "again.json"
    sbom.write(inp, again)
    assert again.read_bytes() == out.read_bytes()


def test_a_file_that_is_not_the_pinned_one_or_a_pin_without_a_file_is_refused_by_name(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError, match=r"demo-dep5_1.0-1_amd64.deb: sha256 .* is not the lock's"):
        sbom.document(_inputs(tmp_path, tamper=True))
    with pytest.raises(UserError, match=r"no file given for pinned input.*missing_9_amd64\.deb"):
        sbom.inputs(
            [
                DebPin(
                    "missing",
                    "9",
                    "amd64",
                    "debian",
                    "pool/m/missing_9_amd64.deb",
                    "0" * 64,
                    1,
                    "root",
                )
            ],
            [],
            [],
            [],
            [],
        )


def test_the_bpf_licence_the_sbom_declares_is_the_one_each_source_states() -> None:
    for src in sorted((REPO / "bpf").glob("*.bpf.c")):
        first = src.read_text().splitlines()[0]
        stated = first.removeprefix("// SPDX-License-Identifier: ").replace(
            "GPL-2.0 ", "GPL-2.0-only "
        )
        assert stated == sbom.BPF_LICENSE, src.name
    loader = (REPO / "bpf/loader/early_attach.c").read_text().splitlines()[0]
    assert loader == f"// SPDX-License-Identifier: {sbom.PROJECT_LICENSE}"


def _image_dir() -> Path:
    for candidate in (
        os.environ.get("SENNET_IMAGE_DIR"),
        REPO / "build/image",
        REPO / "bazel-bin/images",
    ):
        if candidate and (Path(candidate) / "sbom.spdx.json").is_file():
            return Path(candidate)
    pytest.fail(
        "no built image with sbom.spdx.json: run images/build or bazel build //images:appliance"
    )


@pytest.mark.integration
def test_the_built_images_sbom_lists_every_pin_and_artefact_and_ships_on_the_esp() -> None:
    images = _image_dir()
    path = images / "sbom.spdx.json"
    _validate(path)
    doc = json.loads(path.read_text())
    pkgs = _by_name(doc)
    for d in lock.load_debs():
        assert pkgs[d.name]["versionInfo"] == d.version
        assert pkgs[d.name]["checksums"][0]["checksumValue"] == d.sha256
        assert pkgs[d.name]["licenseDeclared"] != "NOASSERTION", d.name
    for w in lock.load_wheels():
        assert pkgs[w.name]["checksums"][0]["checksumValue"] == w.sha256
        assert pkgs[w.name]["licenseDeclared"] != "NOASSERTION", w.name
    for name in ("root.squashfs", "agent.squashfs", "vmlinuz", "uki-a.efi", "uki-test-b.efi"):
        assert pkgs[name]["checksums"][0]["checksumValue"] == _sha(images / name)
    assert pkgs["sennet_tc.bpf.o"]["primaryPackagePurpose"] == "FILE"
    assert pkgs["sennet-early-attach"]["primaryPackagePurpose"] == "APPLICATION"
    for raw in ("appliance.raw", "appliance-test.raw"):
        shipped = subprocess.run(
            ["mtype", "-i", f"{images / raw}@@{1 << 20}", "::/sennet/sbom.spdx.json"],
            check=True,
            capture_output=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        ).stdout
        assert shipped == path.read_bytes(), raw
