"""The SBOM: an SPDX 2.3 JSON document of what the appliance is made of.

Made from the lock files (every pinned Debian package and wheel, with the
sha256 the build checked) and the built artefacts (root, agent and test
layers, kernel, initramfs, UKIs, BPF objects). It lists no download URL:
the lock holds no registry host either, so packages are named by purl
(`pkg:deb/debian/...`, `pkg:pypi/...`) and located by whichever mirror a site
uses. Deterministic like every other artefact: the creation time is
SOURCE_DATE_EPOCH and the namespace is derived from the content, so two
builds of one lock give the same bytes. It goes into the ESP
(`sennet/sbom.spdx.json`) and beside the artefacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sennet_image import licenses
from sennet_image.fsutil import sha256_file
from sennet_image.lock import DebPin, WheelPin
from sennet_image.proc import die, source_date_epoch

PROJECT_LICENSE = "Apache-2.0"
# The SPDX-License-Identifier of every bpf/*.bpf.c (a test keeps the two in step).
BPF_LICENSE = "GPL-2.0-only OR BSD-3-Clause"
SUPPLIER = "Organization: Sennet"
_ID_CHARS = re.compile(r"[^A-Za-z0-9.-]+")
# Built artefacts by file name: what each is, and what it is made from.
LAYER_PURPOSE = {
    "root.squashfs": ("OPERATING-SYSTEM", "the read-only root: Python, libraries, wheels"),
    "agent.squashfs": ("APPLICATION", "the agent layer: the sennet package and BPF objects"),
    "test.squashfs": ("FILE", "test variant only: dropbear and iproute2"),
    "vmlinuz": ("OPERATING-SYSTEM", "the pinned Debian kernel"),
}


@dataclass(frozen=True)
class Inputs:
    """Everything the SBOM is made from, each file beside its pin."""

    version: str
    debs: list[tuple[DebPin, Path]]
    wheels: list[tuple[WheelPin, Path]]
    artefacts: dict[str, Path]  # file name -> built file
    bpf_objects: list[Path]


def spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + _ID_CHARS.sub("-", name).strip("-")


def _digests(path: Path) -> list[dict[str, str]]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha1.update(chunk)
            sha256.update(chunk)
    return [
        {"algorithm": "SHA1", "checksumValue": sha1.hexdigest()},
        {"algorithm": "SHA256", "checksumValue": sha256.hexdigest()},
    ]


def _package(
    ident: str,
    name: str,
    version: str,
    sha256: str | None,
    declared: str,
    purpose: str,
    supplier: str,
    purl: str | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    pkg: dict[str, Any] = {
        "SPDXID": ident,
        "name": name,
        "versionInfo": version,
        "supplier": supplier,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": declared,
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": purpose,
    }
    if sha256 is not None:
        pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": sha256}]
    if purl:
        pkg["externalRefs"] = [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }
        ]
    if comment:
        pkg["comment"] = comment
    return pkg


def _checked(pin_sha256: str, path: Path) -> str:
    """The file's sha256, which must be the lock's: the SBOM describes what was pinned."""
    actual = sha256_file(path)
    if actual != pin_sha256:
        die(f"{path.name}: sha256 {actual} is not the lock's {pin_sha256}")
    return actual


def image_version() -> str:
    """`sennet.__version__`, or SENNET_IMAGE_VERSION for a build that must differ (tests)."""
    from sennet import __version__

    return os.environ.get("SENNET_IMAGE_VERSION") or __version__


def inputs(
    debs: list[DebPin],
    wheels: list[WheelPin],
    files: list[Path],
    artefacts: list[Path],
    bpf_objects: list[Path],
) -> Inputs:
    """Pair each pin with its file (by file name) and fail naming any pin without one."""
    by_name = {f.name: f for f in files}
    pins: list[DebPin | WheelPin] = [*debs, *wheels]
    missing = [p.filename for p in pins if p.filename not in by_name]
    if missing:
        die(f"no file given for pinned input(s): {', '.join(missing)}")
    return Inputs(
        version=image_version(),
        debs=[(d, by_name[d.filename]) for d in debs],
        wheels=[(w, by_name[w.filename]) for w in wheels],
        artefacts={a.name: a for a in artefacts},
        bpf_objects=bpf_objects,
    )


def document(inp: Inputs) -> dict[str, Any]:
    """The SPDX 2.3 document (a dict ready for json.dumps)."""
    lic = licenses.Licensing()
    stated = licenses.overrides(lic)
    packages: list[dict[str, Any]] = []
    rels: list[tuple[str, str, str]] = []
    appliance = spdx_id("Package", "sennet-appliance")
    appliance_test = spdx_id("Package", "sennet-appliance-test")
    for ident, name, what in (
        (appliance, "sennet-appliance", "production image"),
        (appliance_test, "sennet-appliance-test", "test image: production plus the test layer"),
    ):
        # no checksum: the disk holds this document, so its digest cannot be in it
        packages.append(
            _package(
                ident,
                name,
                inp.version,
                None,
                PROJECT_LICENSE,
                "OPERATING-SYSTEM",
                SUPPLIER,
                comment=f"The Sennet appliance, {what}.",
            )
        )
        rels.append(("SPDXRef-DOCUMENT", "DESCRIBES", ident))
    layer_ids: dict[str, str] = {}
    for fname, path in sorted(inp.artefacts.items()):
        purpose, what = LAYER_PURPOSE.get(fname, ("FILE", "boot artefact"))
        ident = spdx_id("Artefact", fname)
        layer_ids[fname] = ident
        declared = PROJECT_LICENSE if fname == "agent.squashfs" else "NOASSERTION"
        packages.append(
            _package(
                ident,
                fname,
                inp.version,
                sha256_file(path),
                declared,
                purpose,
                SUPPLIER,
                comment=what,
            )
        )
        rels.append((appliance_test, "CONTAINS", ident))
        if fname != "test.squashfs" and "-test" not in fname:
            rels.append((appliance, "CONTAINS", ident))
    for pin, path in inp.debs:
        ident = spdx_id("deb", pin.name)
        purl = f"pkg:deb/debian/{pin.name}@{quote(pin.version, safe=':.~-')}?arch={pin.arch}"
        purpose = "OPERATING-SYSTEM" if pin.set == "kernel" else "LIBRARY"
        packages.append(
            _package(
                ident,
                pin.name,
                pin.version,
                _checked(pin.sha256, path),
                licenses.deb_license(pin.name, path, lic, stated),
                purpose,
                "Organization: Debian",
                purl,
                comment=f"archive path {pin.path}",
            )
        )
        containers = {
            "root": "root.squashfs",
            "test": "test.squashfs",
            "kernel": "vmlinuz",
            "initramfs": "initrd.img",  # dmsetup and its libraries (both variants' initramfs)
        }
        container = containers[pin.set]
        if container in layer_ids:
            rel = "GENERATED_FROM" if pin.set == "kernel" else "CONTAINS"
            rels.append((layer_ids[container], rel, ident))
    for wpin, path in inp.wheels:
        ident = spdx_id("wheel", wpin.name)
        purl = f"pkg:pypi/{wpin.name.lower()}@{quote(wpin.version, safe='.')}"
        packages.append(
            _package(
                ident,
                wpin.name,
                wpin.version,
                _checked(wpin.sha256, path),
                licenses.wheel_license(path),
                "LIBRARY",
                "NOASSERTION",
                purl,
                comment=f"wheel {wpin.filename}",
            )
        )
        if "root.squashfs" in layer_ids:
            rels.append((layer_ids["root.squashfs"], "CONTAINS", ident))
    for obj in sorted(inp.bpf_objects, key=lambda p: p.name):
        # a package, not an SPDX file: a package whose files are not analysed (the layers)
        # may not CONTAIN files
        ident = spdx_id("BPF", obj.name)
        is_object = obj.name.endswith(".bpf.o")
        bpf = _package(
            ident,
            obj.name,
            inp.version,
            None,
            BPF_LICENSE if is_object else PROJECT_LICENSE,
            "FILE" if is_object else "APPLICATION",
            SUPPLIER,
            comment="eBPF object loaded by the agent (compiled from bpf/ at build time)"
            if is_object
            else "boot-time loader run by rc.boot (compiled from bpf/loader at build time)",
        )
        bpf["checksums"] = _digests(obj)
        packages.append(bpf)
        if "agent.squashfs" in layer_ids:
            rels.append((layer_ids["agent.squashfs"], "CONTAINS", ident))
    body = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sennet-appliance-{inp.version}",
        "creationInfo": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source_date_epoch())),
            "creators": [f"Tool: sennet-image-{inp.version}", SUPPLIER],
        },
        "packages": packages,
        "relationships": [
            {"spdxElementId": a, "relationshipType": r, "relatedSpdxElement": b} for a, r, b in rels
        ],
        "hasExtractedLicensingInfos": [
            {"licenseId": ref, "extractedText": text, "name": ref.removeprefix("LicenseRef-")}
            for ref, text in sorted(lic.extracted.items())
        ],
    }
    content = json.dumps(body, sort_keys=True).encode()
    body["documentNamespace"] = (
        f"https://spdx.sennet.invalid/appliance/{inp.version}/{hashlib.sha256(content).hexdigest()}"
    )
    return body


def write(inp: Inputs, out: Path) -> None:
    """The document as JSON, keys sorted, so two builds compare byte for byte."""
    out.write_text(json.dumps(document(inp), indent=1, sort_keys=True) + "\n")
