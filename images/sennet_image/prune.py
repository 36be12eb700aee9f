"""Weight the appliance carries but nothing on it uses: removed from the base root.

Each entry says why it is dead on the appliance. What decides "nothing uses it": the
agent and every package it imports (grpc, protobuf, opentelemetry-proto) run in the VM
suite without it, and `check_needed` proves no ELF file left in the root links a removed
library (a dlopen'ed library, like libbpf for
ctypes, is never in this list). The audit table with sizes is in images/README.md.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

from sennet_image.proc import die

SITE = "usr/lib/python3/dist-packages"
STDLIB = "usr/lib/python3.11"
DYNLOAD = f"{STDLIB}/lib-dynload"
LIBDIR = "usr/lib/x86_64-linux-gnu"

# Paths (globs) relative to the root, with why nothing on the appliance needs them.
PRUNE: dict[str, str] = {
    # The standard library's test, REPL, GUI and database parts.
    f"{STDLIB}/doctest.py": "test runner",
    f"{STDLIB}/unittest": "test framework (pyroute2 imported it; the agent attaches via libbpf)",
    f"{STDLIB}/sqlite3": "SQLite bindings (the control plane's, not on the appliance)",
    f"{DYNLOAD}/_sqlite3.*.so": "as sqlite3",
    f"{LIBDIR}/libsqlite3.so*": "_sqlite3's",
    f"{STDLIB}/pydoc.py": "interactive help (no REPL)",
    f"{STDLIB}/pydoc_data": "pydoc's topics",
    f"{STDLIB}/pdb.py": "debugger (no REPL)",
    f"{STDLIB}/turtle.py": "Tk graphics",
    f"{STDLIB}/curses": "terminal UI, with _curses*.so and ncurses",
    f"{STDLIB}/dbm": "key-value databases, with _dbm.so and libdb",
    f"{STDLIB}/xmlrpc": "XML-RPC client and server",
    f"{STDLIB}/mailbox.py": "mail folders",
    f"{STDLIB}/_pydecimal.py": "pure-Python decimal; the C _decimal is there",
    f"{DYNLOAD}/_test*.so": "CPython's own test extensions",
    f"{DYNLOAD}/_ctypes_test.*.so": "CPython's own test extension",
    f"{DYNLOAD}/_xxtestfuzz.*.so": "CPython's own fuzzing extension",
    f"{DYNLOAD}/xxlimited*.so": "example extensions",
    f"{DYNLOAD}/_xxsubinterpreters.*.so": "experimental subinterpreters",
    f"{DYNLOAD}/_curses*.so": "as curses",
    f"{DYNLOAD}/readline.*.so": "line editing for the REPL (no REPL)",
    f"{DYNLOAD}/_dbm.*.so": "as dbm",
    f"{DYNLOAD}/nis.*.so": "NIS lookups, with libnsl/libtirpc/Kerberos",
    f"{DYNLOAD}/ossaudiodev.*.so": "OSS sound",
    f"{DYNLOAD}/audioop.*.so": "audio samples",
    f"{DYNLOAD}/_lsprof.*.so": "profiler",
    f"{DYNLOAD}/_codecs_[chjkt]*.so": "CJK codecs (the agent speaks ASCII and UTF-8)",
    f"{DYNLOAD}/_codecs_iso2022.*.so": "CJK codecs",
    # (libcrypt itself stays: the test layer's dropbear links it)
    f"{STDLIB}/crypt.py": "crypt(3) password hashing (deprecated; no passwords here)",
    f"{DYNLOAD}/_crypt.*.so": "as crypt",
    # Shared libraries only the extensions above link (check_needed proves it).
    f"{LIBDIR}/libdb-5.3.so": "_dbm's",
    f"{LIBDIR}/libreadline.so*": "readline's",
    f"{LIBDIR}/libhistory.so*": "readline's",
    f"{LIBDIR}/lib[fmp]*w.so*": "ncurses form/menu/panel",
    f"{LIBDIR}/libncursesw.so*": "_curses's",
    f"{LIBDIR}/libtic.so*": "ncurses'",
    f"{LIBDIR}/libtinfo.so*": "ncurses'",
    f"{LIBDIR}/libnsl.so*": "nis'",
    f"{LIBDIR}/libtirpc.so*": "libnsl's",
    f"{LIBDIR}/libgssapi_krb5.so*": "libtirpc's",
    f"{LIBDIR}/libkrb5*.so*": "libgssapi's",
    f"{LIBDIR}/libk5crypto.so*": "libkrb5's",
    f"{LIBDIR}/libcom_err.so*": "libkrb5's",
    f"{LIBDIR}/libkeyutils.so*": "libkrb5's",
    f"{LIBDIR}/libc_malloc_debug.so*": "glibc's malloc debugging preload",
    f"{LIBDIR}/libmemusage.so": "glibc's memusage preload",
    f"{LIBDIR}/libpcprofile.so": "glibc's profiling preload",
    f"{LIBDIR}/libthread_db.so*": "debugger support",
    f"{LIBDIR}/libBrokenLocale.so*": "compatibility locale hack",
    f"{LIBDIR}/libmvec.so*": "glibc's vector math, for code built to call it: none here",
    f"{LIBDIR}/libexpatw.so*": "expat's wide-character build (pyexpat links libexpat)",
    f"{LIBDIR}/ossl-modules/legacy.so": "OpenSSL's legacy provider (MD4, DES, ...): "
    "update signatures are Ed25519, TLS uses the default provider",
    f"{LIBDIR}/engines-3": "OpenSSL engines (padlock, afalg, loader_attic): nothing loads one",
}


def prune(root: Path) -> list[str]:
    """Remove every PRUNE match under `root`; the removed paths, sorted (a pattern matching
    nothing is fine: a newer pin may have dropped it already)."""
    removed: list[str] = []
    for pattern in PRUNE:
        parent, name = pattern.rsplit("/", 1)
        base = root / parent
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if not fnmatch.fnmatchcase(path.name, name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path.relative_to(root)))
    return sorted(removed)


def needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of an ELF file (binutils' readelf; [] for anything else)."""
    res = subprocess.run(
        ["readelf", "-d", "-W", str(path)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        return []
    return [
        line.rsplit("[", 1)[1].rstrip("]")
        for line in res.stdout.splitlines()
        if "(NEEDED)" in line and "[" in line
    ]


def check_needed(root: Path, removed: list[str]) -> None:
    """Stop the build if an ELF file left in the root links a library that was removed."""
    gone = {Path(r).name for r in removed if r.startswith(LIBDIR + "/")}
    if not gone:
        return
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        lost = sorted(set(needed(path)) & gone)
        if lost:
            die(
                f"{path.relative_to(root)} links {', '.join(lost)}, which prune.PRUNE removes",
                hint="keep the library (drop its PRUNE entry) or prune the file too",
            )
