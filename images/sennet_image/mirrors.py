"""Where to download a pinned input from: the machine's own package configuration.

No registry host is written in the repository. Debian packages come from the
base URL of the matching apt source (its URI's last path segment is the
lock's `archive`, e.g. `debian` or `debian-security`), wheels from pip's
configured indexes and find-links, else pip's own default index. An
air-gapped site overrides with SENNET_DEBIAN_MIRROR,
SENNET_DEBIAN_SECURITY_MIRROR and SENNET_WHEEL_BASE (a flat directory of
wheels), or fills Bazel's repository cache / --distdir.

Also a tiny CLI for the Bazel repository rule:
    python3 mirrors.py url deb ARCHIVE PATH FILENAME
    python3 mirrors.py url wheel NAME - FILENAME
prints candidate URLs, one per line.
"""

from __future__ import annotations

import configparser
import html.parser
import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

APT_DIR = Path("/etc/apt")
ENV_BY_ARCHIVE = {
    "debian": "SENNET_DEBIAN_MIRROR",
    "debian-security": "SENNET_DEBIAN_SECURITY_MIRROR",
}


def apt_bases(apt_dir: Path = APT_DIR) -> dict[str, str]:
    """Map archive name (URI's last segment) to base URI, from sources.list and *.sources."""
    bases: dict[str, str] = {}
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        uris: list[str] = []
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    key, _, value = line.partition(":")
                    if not line.startswith(("#", " ")) and value:
                        fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() != "no" and "deb" in fields.get(
                    "types", ""
                ):
                    uris += fields.get("uris", "").split()
        elif f.suffix == ".list":
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 2 and words[0] == "deb":
                    uris.append(words[1])
        for uri in uris:
            bases.setdefault(uri.rstrip("/").rsplit("/", 1)[-1], uri.rstrip("/"))
    return bases


def deb_url(archive: str, path: str, apt_dir: Path = APT_DIR) -> str:
    """The URL of `path` (pool/main/...) in `archive`; env override first."""
    env = ENV_BY_ARCHIVE.get(archive, "SENNET_DEBIAN_MIRROR_" + re.sub(r"\W", "_", archive).upper())
    base = os.environ.get(env) or apt_bases(apt_dir).get(archive)
    if not base:
        raise LookupError(f"no apt source for archive {archive!r}; set {env}")
    return f"{base.rstrip('/')}/{path}"


def pip_locations() -> list[tuple[str, str]]:
    """Index URLs and find-links from pip's config files and environment, then pip's default."""
    indexes: list[str] = []
    links: list[str] = []
    for var, dest in (
        ("PIP_INDEX_URL", indexes),
        ("PIP_EXTRA_INDEX_URL", indexes),
        ("PIP_FIND_LINKS", links),
    ):
        dest += os.environ.get(var, "").split()
    home = Path(os.environ.get("HOME", "/root"))
    for cp in _pip_configs(home):
        for key, dest in (
            ("index-url", indexes),
            ("extra-index-url", indexes),
            ("find-links", links),
        ):
            dest += cp.get("global", key, fallback="").split()
    if not any(os.environ.get(v) for v in ("PIP_INDEX_URL",)) and not _has_index_url(home):
        indexes.append(_pip_default_index())
    return [("links", u) for u in links] + [("index", u) for u in indexes]


def _pip_configs(home: Path) -> list[configparser.ConfigParser]:
    """pip's configuration files that parse, in pip's order (unreadable ones are skipped)."""
    parsed = []
    for conf in (
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        home / ".config/pip/pip.conf",
        home / ".pip/pip.conf",
    ):
        cp = configparser.ConfigParser()
        try:
            cp.read(conf)
        except configparser.Error:
            continue
        parsed.append(cp)
    return parsed


def _has_index_url(home: Path) -> bool:
    return any(cp.get("global", "index-url", fallback="") for cp in _pip_configs(home))


def _pip_default_index() -> str:
    """pip's built-in default index, asked from pip itself so no host is written here."""
    try:
        from pip._internal.models.index import PyPI
    except ImportError:
        return ""
    return str(PyPI.simple_url)


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def wheel_urls(name: str, filename: str) -> list[str]:
    """Candidate URLs for a wheel file: env base, find-links dirs, then each index's page."""
    urls: list[str] = []
    base = os.environ.get("SENNET_WHEEL_BASE")
    if base:
        urls.append(f"{base.rstrip('/')}/{filename}")
    for kind, loc in pip_locations():
        if not loc:
            continue
        if kind == "links":
            p = Path(loc.removeprefix("file://"))
            if (p / filename).is_file():
                urls.append((p / filename).as_uri())
            continue
        page = f"{loc.rstrip('/')}/{re.sub(r'[-_.]+', '-', name).lower()}/"
        try:
            with urllib.request.urlopen(page, timeout=30) as resp:
                parser = _Anchors()
                parser.feed(resp.read().decode(errors="replace"))
                final = resp.geturl()
        except (OSError, ValueError):
            continue
        for href in parser.hrefs:
            url = urllib.parse.urljoin(final, href).split("#", 1)[0]
            if url.rsplit("/", 1)[-1] == filename:
                urls.append(url)
    return urls


def main(argv: list[str]) -> int:
    if len(argv) != 6 or argv[1] != "url" or argv[2] not in ("deb", "wheel"):
        print(__doc__, file=sys.stderr)
        return 2
    _, _, kind, archive, path, filename = argv
    try:
        urls = [deb_url(archive, path)] if kind == "deb" else wheel_urls(archive, filename)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not urls:
        print(f"error: no index serves {filename}", file=sys.stderr)
        return 1
    print("\n".join(urls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
