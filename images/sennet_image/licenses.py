"""What licence each input declares, as SPDX license expressions.

Debian packages say it in `/usr/share/doc/<pkg>/copyright`; most use the
machine-readable format (DEP-5), whose `License:` short names are close to, but
not the same as, SPDX identifiers (`GPL-2+` is `GPL-2.0-or-later`). Names with
no SPDX identifier become `LicenseRef-` entries carrying the text Debian ships,
so nothing is guessed. Copyright files in free-form prose cannot be read by a
program: `images/sbom-licenses.toml` states those packages' licences, and the
SBOM test fails for a package that has neither, so a lock update cannot add
one silently. Wheels say it in METADATA (`License-Expression`, else `License`).
"""

from __future__ import annotations

import email
import re
import subprocess
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sennet_image.proc import die

OVERRIDES = Path(__file__).resolve().parent.parent / "sbom-licenses.toml"
NOASSERTION = "NOASSERTION"

# DEP-5 short names (lower-cased) -> SPDX identifiers.
DEBIAN_TO_SPDX = {
    "apache-2": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "artistic": "Artistic-1.0-Perl",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "expat": "MIT",
    "mit": "MIT",
    "mit/x11": "X11",
    "x11": "X11",
    "isc": "ISC",
    "zlib": "Zlib",
    "unlicense": "Unlicense",
    "wtfpl-2": "WTFPL",
    "ms-pl": "MS-PL",
    "sleepycat": "Sleepycat",
    "mpl-1.1": "MPL-1.1",
    "gpl-1+": "GPL-1.0-or-later",
    "gpl-2": "GPL-2.0-only",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-2+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later",
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-2.1+": "LGPL-2.1-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
    "gfdl-niv-1.3": "GFDL-1.3-no-invariants-only",
    "gfdl-niv-1.3+": "GFDL-1.3-no-invariants-or-later",
    "psf-2": "PSF-2.0",
}
# DEP-5 "with X exception" -> SPDX exception identifiers.
EXCEPTIONS = {
    "linux-syscall-note": "Linux-syscall-note",
    "bison": "Bison-exception-2.2",
    "texinfo": "Texinfo-exception",
    "gcc-runtime": "GCC-exception-3.1",
    "autoconf": "Autoconf-exception-generic",
    "libtool": "Libtool-exception",
}
# Free-text `License:` values of wheels -> SPDX.
WHEEL_TEXT = {"3-clause bsd license": "BSD-3-Clause", "bsd": "BSD-3-Clause"}
_REF_CHARS = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass
class Licensing:
    """Expressions per input, plus the texts of every LicenseRef they use."""

    extracted: dict[str, str] = field(default_factory=dict)  # LicenseRef-x -> text
    scope: str = ""  # the package whose copyright file is being read

    def ref(self, name: str, text: str) -> str:
        """A LicenseRef per package and name: two packages' "public-domain" differ in text."""
        ident = "LicenseRef-" + _REF_CHARS.sub("-", f"{self.scope}-{name}").strip("-")
        self.extracted.setdefault(
            ident, text or f"The licence the {self.scope} package's copyright file calls {name!r}."
        )
        return ident


def deb_copyright(deb: Path) -> str:
    """The package's copyright file, streamed out of the .deb (a kernel package's data is
    hundreds of MiB: never held in memory, and the stream stops at the file)."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    parts = member.name.split("/")
                    if parts[-1] == "copyright" and parts[-3:-2] == ["doc"] and member.isfile():
                        f = tar.extractfile(member)
                        return f.read().decode(errors="replace") if f else ""
        finally:
            proc.kill()
    return ""


def _paragraphs(text: str) -> list[dict[str, str]]:
    """DEP-5 paragraphs as field -> value (continuation lines joined with newlines)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def _term(token: str, texts: dict[str, str], lic: Licensing) -> str:
    """One DEP-5 licence name (maybe `X with Y exception`) as an SPDX term."""
    token = token.strip()
    m = re.fullmatch(r"(.+?)\s+with\s+(.+?)\s+exception", token, flags=re.I)
    if m and m.group(1).lower() in DEBIAN_TO_SPDX and m.group(2).lower() in EXCEPTIONS:
        return f"{DEBIAN_TO_SPDX[m.group(1).lower()]} WITH {EXCEPTIONS[m.group(2).lower()]}"
    spdx = DEBIAN_TO_SPDX.get(token.lower())
    return spdx or lic.ref(token, texts.get(token.lower(), ""))


def debian_expression(copyright_text: str, lic: Licensing) -> str | None:
    """AND of the licences of every `Files:` paragraph; None if the file is not DEP-5."""
    paras = _paragraphs(copyright_text)
    if not paras or "format" not in paras[0]:
        return None
    texts = {
        p["license"].split("\n", 1)[0].strip().lower(): p["license"].partition("\n")[2]
        for p in paras
        if "license" in p and "files" not in p
    }
    terms: list[str] = []
    for p in paras:
        if "files" not in p or "license" not in p:
            continue
        name = p["license"].split("\n", 1)[0].strip()
        if not name:
            continue
        alternatives = re.split(r"\s+or\s+", name, flags=re.I)
        parts = []
        for alt in alternatives:
            conj = [_term(t, texts, lic) for t in re.split(r"\s+and\s+", alt, flags=re.I)]
            parts.append(conj[0] if len(conj) == 1 else "(" + " AND ".join(conj) + ")")
        term = parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
        if term not in terms:
            terms.append(term)
    if not terms:
        return None
    return " AND ".join(terms)


def overrides(lic: Licensing, path: Path = OVERRIDES) -> dict[str, str]:
    """Package -> SPDX expression for copyright files no program can read (their
    LicenseRef texts, if any, join `lic.extracted`)."""
    try:
        data = tomllib.loads(path.read_text())
        table = data.get("debian", {})
        out = {}
        for name, entry in table.items():
            out[name] = str(entry["license"])
            for ref, text in entry.get("texts", {}).items():
                lic.extracted[str(ref)] = str(text)
    except (OSError, tomllib.TOMLDecodeError, KeyError, AttributeError) as e:
        die(f"{path}: {e!r}", hint='each [debian.NAME] needs license = "SPDX expression"')
    return out


def deb_license(name: str, deb: Path, lic: Licensing, stated: dict[str, str]) -> str:
    """The declared licence of one Debian package (stated in the override file wins)."""
    if name in stated:
        return stated[name]
    lic.scope = name
    return debian_expression(deb_copyright(deb), lic) or NOASSERTION


def wheel_license(wheel: Path) -> str:
    """A wheel's declared licence from its METADATA (PEP 639 expression first)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.message_from_bytes(z.read(meta))
    expression = msg.get("License-Expression")
    if expression:
        return str(expression).strip()
    text = str(msg.get("License") or "").strip().lower()
    return WHEEL_TEXT.get(text, NOASSERTION)
