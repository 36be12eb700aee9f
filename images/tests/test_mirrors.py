"""Base URLs come from the machine's apt sources, or from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from sennet_image import mirrors


def _apt(tmp_path: Path) -> Path:
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security/\n"
        "Suites: bookworm-security\nComponents: main\n\nTypes: deb\nEnabled: no\n"
        "URIs: http://other.example/x\nSuites: y\n"
    )
    (d / "sources.list").write_text("deb [arch=amd64] http://legacy.example/ports stable main\n")
    return d


def test_apt_bases_reads_deb822_and_one_line_sources_skipping_disabled(tmp_path: Path) -> None:
    assert mirrors.apt_bases(_apt(tmp_path)) == {
        "debian": "http://mirror.example/debian",
        "debian-security": "http://mirror.example/debian-security",
        "ports": "http://legacy.example/ports",
    }


def test_deb_url_joins_the_archive_base_and_the_pool_path(tmp_path: Path) -> None:
    url = mirrors.deb_url("debian-security", "pool/main/l/linux/x.deb", _apt(tmp_path))
    assert url == "http://mirror.example/debian-security/pool/main/l/linux/x.deb"


def test_environment_overrides_the_apt_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENNET_DEBIAN_MIRROR", "file:///srv/mirror/debian")
    assert (
        mirrors.deb_url("debian", "pool/a.deb", _apt(tmp_path))
        == "file:///srv/mirror/debian/pool/a.deb"
    )


def test_unknown_archive_says_which_variable_to_set(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="SENNET_DEBIAN_MIRROR_ELSEWHERE"):
        mirrors.deb_url("elsewhere", "pool/a.deb", _apt(tmp_path))
