"""manifest.json of a bundle (format sennet-bundle/1): parsed and checked field by field.

The manifest is the signed part: the signature covers these bytes, and every
member of the bundle is then checked against the sizes and sha256 listed here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sennet.update import versions
from sennet.update.errors import Refused

FORMAT = "sennet-bundle/1"
# manifest "images" key -> tar member name, in the bundle's member order
IMAGES = {"uki-a": "uki-a.efi", "uki-b": "uki-b.efi", "root": "root.img", "agent": "agent.img"}
MAX_MANIFEST_BYTES = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    compatible: str
    version: str
    image_digest: str
    min_from_version: str
    images: dict[str, ImageRef]


def _field(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise Refused("malformed", f"manifest.json: {key} must be a non-empty string")
    return value


def parse(raw: bytes) -> Manifest:
    """Check every field the updater relies on; `Refused(malformed)` names the first bad one."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused("malformed", f"manifest.json is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused("malformed", "manifest.json is not an object")
    if data.get("format") != FORMAT:
        raise Refused("malformed", f"manifest.json: format is {data.get('format')!r}, not {FORMAT}")
    version = _field(data, "version")
    min_from = _field(data, "min_from_version")
    for key, value in (("version", version), ("min_from_version", min_from)):
        if not versions.valid(value):
            raise Refused("malformed", f"manifest.json: {key} {value!r} is not a dotted version")
    digest = _field(data, "image_digest")
    if not _HEX64.match(digest):
        raise Refused("malformed", "manifest.json: image_digest is not 64 lowercase hex digits")
    raw_images = data.get("images")
    if not isinstance(raw_images, dict) or set(raw_images) != set(IMAGES):
        raise Refused("malformed", f"manifest.json: images must list exactly {sorted(IMAGES)}")
    images: dict[str, ImageRef] = {}
    for key in IMAGES:
        ref = raw_images[key]
        sha = ref.get("sha256") if isinstance(ref, dict) else None
        size = ref.get("size") if isinstance(ref, dict) else None
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise Refused("malformed", f"manifest.json: images.{key}.sha256 is not 64 hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise Refused("malformed", f"manifest.json: images.{key}.size is not a positive int")
        images[key] = ImageRef(sha, size)
    return Manifest(_field(data, "compatible"), version, digest, min_from, images)
