"""Resolve images/inputs.toml to exact pins, rewrite the locks and deps.bzl, print what moved.

Debian: apt resolves the dependency closure (no recommends) against an empty
package status, so the result does not depend on what this host has
installed; versions, archive paths and sha256 come from apt's package
index, which apt verified against the archive's signed Release file
(debian-archive-keyring) when the index was fetched. `--refresh` runs
`apt-get update` first. Wheels: pip resolves the requirements for CPython 3.11
manylinux x86_64 with python/constraints.txt and reports each file's sha256.

Debian's registry serves only current versions, so pins move (security
updates replace a kernel within weeks). `--only-if-gone` is the CI-safe
path: it rewrites the locks only when a pinned package has left the index,
and then says so loudly; release builds use the locks as they are.
"""

from __future__ import annotations

import json
import re
import tempfile
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sennet_image import lock
from sennet_image.lock import DebPin, WheelPin
from sennet_image.mirrors import apt_bases
from sennet_image.proc import die, log, run


@dataclass(frozen=True)
class Inputs:
    """images/inputs.toml, parsed."""

    root: tuple[str, ...]
    kernel: str
    test: tuple[str, ...]
    initramfs: tuple[str, ...]
    exclude: frozenset[str]
    test_exclude: frozenset[str]
    constraints: Path
    requirements: tuple[str, ...]
    python_version: str
    platforms: tuple[str, ...]
    tools: tuple[str, ...] = ()


def load_inputs(path: Path = lock.IMAGES_DIR / "inputs.toml") -> Inputs:
    """Parse the input spec; a missing key stops with its name."""
    data = tomllib.loads(path.read_text())
    try:
        deb, py = data["debian"], data["python"]
        return Inputs(
            root=tuple(deb["root"]),
            kernel=deb["kernel"],
            test=tuple(deb.get("test", [])),
            initramfs=tuple(deb.get("initramfs", [])),
            exclude=frozenset(deb.get("exclude", {})),
            test_exclude=frozenset(deb.get("test_exclude", {})),
            constraints=(path.parent / py["constraints"]).resolve(),
            requirements=tuple(py["requirements"]),
            python_version=py["python_version"],
            platforms=tuple(py["platforms"]),
            tools=tuple(data.get("buildroot", {}).get("tools", [])),
        )
    except KeyError as exc:
        die(f"{path}: missing key {exc}")


def _apt_closure(names: tuple[str, ...], work: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, url) for `names` and their dependencies, as on an empty system.

    An empty status file and an empty archive cache: otherwise apt leaves out what
    this host has installed or already downloaded.
    """
    (work / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    status = work / "status"
    status.touch()
    out = run(
        [
            "apt-get",
            "-o",
            f"Dir::State::status={status}",
            "-o",
            "APT::Install-Recommends=false",
            "-o",
            f"Dir::Cache::archives={work / 'archives'}",
            "-o",
            "Debug::NoLocking=1",
            "install",
            "--print-uris",
            "-y",
            "-qq",
            *names,
        ]
    ).stdout.decode()
    result = {}
    for line in out.splitlines():
        m = re.match(r"'([^']+)' (\S+?)_(\S+?)_(\S+?)\.deb ", line)
        if m:
            result[m.group(2)] = (urllib.parse.unquote(m.group(3)), m.group(1))
    return result


def _apt_show(name: str, version: str | None = None) -> dict[str, str]:
    spec = f"{name}={version}" if version else name
    out = run(["apt-cache", "show", "--no-all-versions", spec], check=False)
    if out.returncode != 0:
        raise LookupError(spec)
    fields: dict[str, str] = {}
    for line in out.stdout.decode().split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields[key] = value
    return fields


def _deb_pin(name: str, version: str, url: str, pin_set: str, archives: dict[str, str]) -> DebPin:
    """Pin one package from apt's (signature-verified) index."""
    f = _apt_show(name, version)
    archive = next((a for a, base in archives.items() if url.startswith(base + "/")), "")
    if not archive:
        die(f"{name}: {url} matches no apt source")
    return DebPin(
        name=name,
        version=f["Version"],
        arch=f["Architecture"],
        archive=archive,
        path=f["Filename"],
        sha256=f["SHA256"],
        size=int(f["Size"]),
        set=pin_set,
    )


def resolve_debs(inputs: Inputs) -> list[DebPin]:
    """Pin the root closure, the kernel alone, and the test and initramfs extras not already
    in the root."""
    archives = apt_bases()
    with tempfile.TemporaryDirectory() as tmp:
        root = _apt_closure(inputs.root, Path(tmp))
        test = _apt_closure(inputs.root + inputs.test, Path(tmp))
        early = _apt_closure(inputs.initramfs, Path(tmp)) if inputs.initramfs else {}
        kernel = _apt_closure((inputs.kernel,), Path(tmp))[inputs.kernel]
    pins = [
        _deb_pin(n, v, u, "root", archives) for n, (v, u) in root.items() if n not in inputs.exclude
    ]
    pins += [
        _deb_pin(n, v, u, "test", archives)
        for n, (v, u) in test.items()
        # not already pinned in the root; the root's exclusions do not apply (libbsd0 needs libmd0)
        if n not in inputs.test_exclude and (n not in root or n in inputs.exclude)
    ]
    pinned = {p.name for p in pins}
    pins += [
        _deb_pin(n, v, u, "initramfs", archives)
        for n, (v, u) in early.items()
        if n not in pinned  # one pin per package: libc6 is the root's (sets are disjoint)
    ]
    pins.append(_deb_pin(inputs.kernel, kernel[0], kernel[1], "kernel", archives))
    log("lock_debs_resolved", packages=len(pins))
    return sorted(pins)


def _apt_show_all(specs: list[str]) -> dict[str, dict[str, str]]:
    """`apt-cache show` for many `name=version` at once (one run, not one per package:
    the build root has ~150), keyed by package name."""
    out = run(["apt-cache", "show", "--no-all-versions", *specs]).stdout.decode()
    found: dict[str, dict[str, str]] = {}
    for para in out.split("\n\n"):
        fields = {}
        for line in para.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def resolve_tools(inputs: Inputs) -> list[DebPin]:
    """Pin the build root: the tools and their dependency closure, as on an empty system."""
    archives = apt_bases()
    with tempfile.TemporaryDirectory() as tmp:
        closure = _apt_closure(inputs.tools, Path(tmp))
    shown = _apt_show_all([f"{n}={v}" for n, (v, _) in sorted(closure.items())])
    pins = []
    for name, (_, url) in sorted(closure.items()):
        f = shown[name]
        archive = next((a for a, base in archives.items() if url.startswith(base + "/")), "")
        if not archive:
            die(f"{name}: {url} matches no apt source")
        pins.append(
            DebPin(
                name=name,
                version=f["Version"],
                arch=f["Architecture"],
                archive=archive,
                path=f["Filename"],
                sha256=f["SHA256"],
                size=int(f["Size"]),
                set="build",
            )
        )
    log("lock_tools_resolved", packages=len(pins))
    return sorted(pins)


def resolve_wheels(inputs: Inputs) -> list[WheelPin]:
    """Pin the wheels pip would install for the image's interpreter and platform."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        platform_args = [a for p in inputs.platforms for a in ("--platform", p)]
        run(
            [
                "python3",
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--only-binary=:all:",
                *platform_args,
                "--python-version",
                inputs.python_version,
                "--implementation",
                "cp",
                "--target",
                str(Path(tmp) / "t"),
                "--report",
                str(report),
                "-c",
                str(inputs.constraints),
                *inputs.requirements,
            ]
        )
        items = json.loads(report.read_text())["install"]
    pins = []
    for item in items:
        info = item["download_info"]
        pins.append(
            WheelPin(
                name=item["metadata"]["name"].lower().replace("_", "-"),
                version=item["metadata"]["version"],
                filename=urllib.parse.unquote(info["url"].rsplit("/", 1)[-1]),
                sha256=info["archive_info"]["hashes"]["sha256"],
            )
        )
    log("lock_wheels_resolved", wheels=len(pins))
    return sorted(pins)


def diff(old: list[DebPin] | list[WheelPin], new: list[DebPin] | list[WheelPin]) -> list[str]:
    """Human lines: `+ name version`, `- name version`, `~ name old -> new`."""
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    lines = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            lines.append(f"+ {name} {b.version}")
        elif b is None and a is not None:
            lines.append(f"- {name} {a.version}")
        elif a is not None and b is not None and a != b:
            what = f"{a.version} -> {b.version}" if a.version != b.version else "sha256 changed"
            lines.append(f"~ {name} {what}")
    return lines


def gone(pins: list[DebPin]) -> list[DebPin]:
    """Pinned packages the current (verified) index no longer lists at that version and hash."""
    missing = []
    for p in pins:
        try:
            f = _apt_show(p.name, p.version)
        except LookupError:
            missing.append(p)
            continue
        if f.get("SHA256") != p.sha256:
            missing.append(p)
    return missing


def update(*, refresh: bool, check: bool, only_if_gone: bool) -> int:
    """The lock-update command; returns the exit status."""
    if refresh:
        log("apt_update", why="verify the index against debian-archive-keyring before pinning")
        run(["apt-get", "update", "-qq"])
    old_debs = lock.load_debs() if lock.DEBIAN_LOCK.exists() else []
    old_wheels = lock.load_wheels() if lock.WHEELS_LOCK.exists() else []
    old_tools = lock.load_debs(lock.BUILDROOT_LOCK) if lock.BUILDROOT_LOCK.exists() else []
    if only_if_gone:
        missing = gone(old_debs + old_tools)
        if not missing:
            log("lock_current", packages=len(old_debs))
            return 0
        for p in missing:
            print(f"!!! PIN GONE FROM THE REGISTRY: {p.name} {p.version} -- refreshing the locks")
    inputs = load_inputs()
    debs = resolve_debs(inputs)
    wheels = resolve_wheels(inputs) if not only_if_gone else old_wheels
    tools = resolve_tools(inputs)
    changes = diff(old_debs, debs) + diff(old_wheels, wheels)
    changes += [f"{line} (build root)" for line in diff(old_tools, tools)]
    for line in changes:
        print(line)
    if not changes:
        print("locks unchanged")
    if check:
        return 1 if changes else 0
    lock.save_debs(debs)
    lock.save_wheels(wheels)
    lock.DEPS_BZL.write_text(lock.render_deps_bzl(debs, wheels))
    lock.save_debs(tools, lock.BUILDROOT_LOCK)
    lock.BUILDROOT_BZL.write_text(lock.render_buildroot_bzl(tools))
    if only_if_gone and changes:
        print("!!! LOCKS REWRITTEN IN THE WORK TREE (pins moved); commit them for a release build")
    log("lock_written", debs=len(debs), wheels=len(wheels), tools=len(tools), changes=len(changes))
    return 0
