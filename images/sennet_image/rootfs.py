"""The read-only layers: base root, agent layer, test overlay — each its own squashfs.

Why three layers: the base (Python, libraries, wheels; ~90% of the bytes)
changes only when a pin moves, the agent layer (the sennet package and the
BPF objects) changes on every agent commit, and the test overlay (dropbear)
must never reach the production disk. Rebuilding after an agent change then
recompresses a few hundred kilobytes, not the whole root.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from sennet_image import debs, keyring, kmods, prune
from sennet_image.fsutil import file_list, normalize_times, prune_empty_dirs
from sennet_image.proc import die, run, source_date_epoch, step

IMAGES_DIR = Path(__file__).resolve().parent.parent
OVERLAY = IMAGES_DIR / "rootfs"
TESTFS = IMAGES_DIR / "testfs"
SITE = "usr/lib/python3/dist-packages"
PY = "python3.11"

# busybox applets linked in the production root: what init, the network set-up and an
# operator on the console need. No servers (telnetd, httpd, nc), no package tools (dpkg, rpm).
APPLETS = [
    "sh",
    "ash",
    "cat",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dmesg",
    "echo",
    "env",
    "false",
    "grep",
    "halt",
    "hexdump",
    "hostname",
    "id",
    "ip",
    "kill",
    "killall",
    "ln",
    "ls",
    "lsmod",
    "mkdir",
    "mke2fs",
    "mknod",
    "mount",
    "mv",
    "renice",
    "pidof",
    "poweroff",
    "ps",
    "readlink",
    "reboot",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sleep",
    "sort",
    "stat",
    "sync",
    "sysctl",
    "tail",
    "tc",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "udhcpc",
    "umount",
    "uname",
    "uptime",
    "usleep",
    "wc",
    "head",
    "init",
    "insmod",
    "rmmod",
    "modinfo",
]
SBIN_APPLETS = {
    "init",
    "halt",
    "poweroff",
    "reboot",
    "insmod",
    "rmmod",
    "lsmod",
    "mke2fs",
    "sysctl",
    "udhcpc",
    "modinfo",
}


def _usrmerge(root: Path) -> None:
    """Debian 12's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr."""
    for d in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / d).mkdir(parents=True, exist_ok=True)
        (root / d).symlink_to(f"usr/{d}")


# Parts of wheels the agent never imports: test suites, Fortran wrapper generator,
# C headers, type stubs, Cython declarations (about 22 MB of the root uncompressed).
WHEEL_PRUNE_DIRS = ("tests", "f2py", "include", "_pyinstaller")
WHEEL_PRUNE_SUFFIXES = (".pyi", ".pxd", ".h")


def prune_site(site: Path) -> None:
    """Drop WHEEL_PRUNE_* from site-packages."""
    for path in sorted(site.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink() and path.name in WHEEL_PRUNE_DIRS:
            shutil.rmtree(path)
        elif path.is_file() and path.suffix in WHEEL_PRUNE_SUFFIXES:
            path.unlink()


def install_wheel(wheel: Path, site: Path) -> None:
    """Unpack a wheel into site-packages (purelib/platlib only; no scripts, no pip)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if name.endswith("/"):
                continue
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                    name = "/".join(parts[2:])
                else:
                    continue  # scripts, headers, data: not needed on the appliance
            if ".." in parts or name.startswith("/"):
                die(f"{wheel.name}: refusing member {info.filename}")
            target = site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(0o755 if mode & 0o111 else 0o644)


def compile_pyc(
    root: Path,
    dirs: list[str],
    prefix: str,
    python: list[str] | None = None,
    sourceless: bool = False,
) -> None:
    """Byte-compile with hash-based .pyc (no mtimes) so the read-only root starts fast.

    `python` is the interpreter to use: for the base layer the image's own
    python3.11, run through the image's own dynamic loader (so the host's
    Python plays no part); paths recorded inside are the image's, not the build's.
    `sourceless`: each module's .pyc beside it (legacy layout, which Python imports
    without the source) and the .py removed: the root then carries each module once,
    not twice (16 MB of .py beside 19 MB of .pyc). Tracebacks from these modules
    show file and line but not the line's text; the agent layer keeps its sources.
    """
    targets = [str(root / d) for d in dirs if (root / d).exists()]
    run(
        [
            *(python or ["python3.11"]),
            "-E",
            # -B: the interpreter must not cache its own imports (argparse, ...) as
            # timestamp .pyc first; -f: recompile every file whatever is there.
            "-B",
            "-m",
            "compileall",
            "-f",
            "-q",
            "-j",
            "1",
            "--invalidation-mode",
            "unchecked-hash",
            *(["-b"] if sourceless else []),
            "-s",
            str(root),
            "-p",
            prefix,
            *targets,
        ]
    )
    if sourceless:
        for target in targets:
            for py in sorted(Path(target).rglob("*.py")):
                if py.with_suffix(".pyc").is_file():  # what failed to compile keeps its source
                    py.unlink()


def image_python(root: Path) -> list[str]:
    """argv prefix that runs the unpacked image's python3.11 with its own ld.so and libraries."""
    return [
        str(root / "usr/lib64/ld-linux-x86-64.so.2"),
        "--library-path",
        str(root / "usr/lib/x86_64-linux-gnu"),
        str(root / f"usr/bin/{PY}"),
    ]


def build_base(
    root: Path, debs_list: list[Path], wheels: list[Path], kernel_deb: Path
) -> list[str]:
    """Assemble the base root tree in `root` from the root debs, wheels, the overlay and the
    kernel package's USB-stick drivers (kmods.USB_STORAGE)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    _usrmerge(root)
    with step("unpack_debs", count=len(debs_list)):
        for deb in debs_list:
            if deb.name.startswith("busybox-static"):
                debs.unpack(deb, root, only=("bin/busybox", "usr/bin/busybox"))
            else:
                debs.unpack(deb, root)
    with step("install_wheels", count=len(wheels)):
        site = root / SITE
        site.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            install_wheel(w, site)
        prune_site(site)
        shutil.copy(OVERLAY / "sennet-agent.pth", site / "sennet-agent.pth")
    bb = "usr/bin/busybox" if (root / "usr/bin/busybox").exists() else "bin/busybox"
    for applet in APPLETS:
        where = root / ("usr/sbin" if applet in SBIN_APPLETS else "usr/bin") / applet
        if not where.exists():
            where.symlink_to(f"/{bb}")
    for sub in ("etc", "usr"):
        shutil.copytree(OVERLAY / sub, root / sub, dirs_exist_ok=True, symlinks=True)
    (root / "usr/bin/python3").symlink_to(PY)
    make_mount_points(root)
    (root / "root").symlink_to("/run/root")
    (root / "etc/resolv.conf").symlink_to("/run/resolv.conf")
    (root / "etc/hostname").write_text("sennet\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "usr/lib/os-release").write_text(os_release())
    keyring.install(root)
    kmods.install_usb_storage(kernel_deb, root)
    with step("prune"):
        removed = prune.prune(root)
        prune.check_needed(root, removed)
    prune_empty_dirs(root)
    make_mount_points(root)
    with step("compile_pyc"):
        compile_pyc(root, [f"usr/lib/{PY}", SITE], "/", image_python(root), sourceless=True)
    return file_list(root)


MOUNT_POINTS = (
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var/lib/sennet",
    "opt/sennet",
    "opt/sennet-test",
    "boot/efi",
)


def make_mount_points(root: Path) -> None:
    """Empty directories the init mounts onto (the read-only root cannot create them later)."""
    for d in MOUNT_POINTS:
        (root / d).mkdir(parents=True, exist_ok=True)


def os_release() -> str:
    """/usr/lib/os-release, also the UKI's .osrel section."""
    return (
        'NAME="Sennet appliance"\nID=sennet\nID_LIKE=debian\nVERSION_ID=0.1\n'
        'PRETTY_NAME="Sennet appliance 0.1 (Debian 12 based)"\n'
    )


def build_agent(tree: Path, python_src: Path, bpf_objects: list[Path]) -> list[str]:
    """The agent layer, mounted at /opt/sennet: lib/sennet (agent + common), bpf/*.o, and
    bin/ for the programs built beside them (sennet-early-attach, which rc.boot runs)."""
    if tree.exists():
        shutil.rmtree(tree)
    lib = tree / "lib"
    lib.mkdir(parents=True)
    src = python_src / "sennet"
    if not (src / "agent" / "cli.py").is_file():
        die(f"agent sources not found under {src}")
    shutil.copytree(
        src,
        lib / "sennet",
        ignore=shutil.ignore_patterns(
            # only what //python:agent_sources globs (sennet/**/*.py): no .pyi stubs
            "__pycache__",
            "*.pyc",
            "*.pyi",
            "controlplane",
            "testing",
            "assets",
            "*.bpf.o",
        ),
    )
    (tree / "bpf").mkdir()
    (tree / "bin").mkdir()
    for obj in bpf_objects:
        # objects are data, 0644, whatever mode the builder left (Bazel's outputs are 0555)
        dest, mode = (tree / "bpf", 0o644) if obj.name.endswith(".bpf.o") else (tree / "bin", 0o755)
        shutil.copyfile(obj, dest / obj.name)
        (dest / obj.name).chmod(mode)
    compile_pyc(tree, ["lib"], "/opt/sennet")
    return file_list(tree)


TEST_TOOLS = {"tc": "usr/sbin/tc", "ip": "usr/bin/ip"}
# iproute2 parts that link what neither layer carries, so they could never run (the image
# test `test_built_layers` checks every ELF in both layers finds its libraries).
TEST_UNUSABLE = {
    "usr/bin/ss": "libtirpc (pruned from the root with Kerberos)",
    "usr/sbin/arpd": "libdb (pruned from the root)",
    "usr/lib/x86_64-linux-gnu/tc/q_atm.so": "libatm (not pinned)",
}


def build_testfs(tree: Path, test_debs: list[Path]) -> list[str]:
    """The test overlay, mounted at /opt/sennet-test: dropbear, iproute2, their libraries,
    rc.test, and tools/{tc,ip} wrappers that find those libraries."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    _usrmerge(tree)
    for deb in test_debs:
        debs.unpack(deb, tree)
    for name in ("usr/bin/dbclient", "usr/bin/dropbearconvert", *TEST_UNUSABLE):
        (tree / name).unlink(missing_ok=True)
    shutil.copy(TESTFS / "rc.test", tree / "rc.test")
    (tree / "rc.test").chmod(0o755)
    (tree / "tools").mkdir()
    for tool, rel in TEST_TOOLS.items():
        wrapper = tree / "tools" / tool
        wrapper.write_text(
            "#!/bin/sh\n"
            "LD_LIBRARY_PATH=/opt/sennet-test/usr/lib/x86_64-linux-gnu "
            f'exec /opt/sennet-test/{rel} "$@"\n'
        )
        wrapper.chmod(0o755)
    prune_empty_dirs(tree)
    return file_list(tree)


def mksquashfs(tree: Path, out: Path, sort: Path | None = None) -> None:
    """Deterministic squashfs: fixed times and owners, no xattrs, sorted by mksquashfs.

    zstd in 256 KiB blocks, not xz in 1 MiB: measured under TCG, importing numpy
    took 3.6 s instead of 10.4 s and grpc 2.9 s instead of 8.2 s, because Python's
    start reads many small files and each read decompresses a whole block. It
    costs about 7 MB of image size (within the 80 MB budget). `sort`: a -sort list (files
    written first, see sennet_image.startup).
    """
    epoch = source_date_epoch()
    normalize_times(tree, epoch)
    out.unlink(missing_ok=True)
    extra = ["-Xcompression-level", "19"]
    comp = "zstd"
    with step("mksquashfs", out=out.name):
        run(
            [
                "mksquashfs",
                tree,
                out,
                "-noappend",
                "-comp",
                comp,
                *extra,
                "-b",
                "256K",
                *(["-sort", str(sort)] if sort is not None else []),
                "-all-root",
                "-no-xattrs",
                "-reproducible",
                "-quiet",
                "-no-progress",
                "-processors",
                str(os.cpu_count() or 1),
            ]
        )
