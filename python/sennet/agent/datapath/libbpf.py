"""ctypes binding to the system libbpf (libbpf.so.1): just the calls Sennet needs.

There is no maintained Python binding for libbpf; the C library itself is the
well-kept part, and Debian ships it (libbpf1) for the appliance and for hosts.
This module stays thin: every function returns Python values or raises
`BpfError` carrying errno and, for loads, libbpf's own log (verifier output).
The map operations work on any map fd, so they serve both loaders (bcc too).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sennet.common.errors import UserError

BPF_ANY = 0
BPF_F_LOCK = 4  # lookup/update of a value holding a bpf_spin_lock: taken by the kernel
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


class BpfError(OSError):
    """A libbpf call failed; `log` holds what libbpf printed while it ran."""

    def __init__(self, err: int, what: str, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}" + (f"\n{log}" if log else ""))
        self.log = log


class BpfMapInfo(ctypes.Structure):
    """Prefix of the kernel's struct bpf_map_info (stable, append-only ABI)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class BpfProgInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_prog_info, up to the name (the kernel fills
    no more than the size it is given)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class BpfTestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts (libbpf 1.x layout)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    """libbpf's struct bpf_map_batch_opts."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says a map is; used to check pinned maps before trusting them."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    id: int = 0  # the kernel's map id: the same map seen through two fds has one


class LibBpf:
    """Loaded libbpf with typed signatures. One per process (see `libbpf()`)."""

    def __init__(self) -> None:
        try:
            self.lib = _load_libbpf()
        except OSError as exc:
            raise UserError(
                f"cannot load libbpf: {exc}",
                hint="install libbpf1 (apt-get install libbpf1)",
            ) from exc
        self.libc = ctypes.CDLL(None, use_errno=True)
        self._log_lock = threading.Lock()
        self._log: list[str] = []
        self._declare()
        self._printer = _PRINT_FN(self._print)
        self.lib.libbpf_set_print(self._printer)

    def _declare(self) -> None:
        lib, p, i, u32, sz = (
            self.lib,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_uint32,
            ctypes.c_size_t,
        )
        sigs: dict[str, tuple[Any, list[Any]]] = {
            "libbpf_set_print": (p, [_PRINT_FN]),
            "bpf_object__open_file": (p, [ctypes.c_char_p, p]),
            "bpf_object__load": (i, [p]),
            "bpf_object__close": (None, [p]),
            "bpf_object__btf": (p, [p]),
            "bpf_object__find_map_by_name": (p, [p, ctypes.c_char_p]),
            "bpf_object__next_map": (p, [p, p]),
            "bpf_object__find_program_by_name": (p, [p, ctypes.c_char_p]),
            "bpf_program__fd": (i, [p]),
            "bpf_program__set_autoload": (i, [p, ctypes.c_bool]),
            "bpf_map__fd": (i, [p]),
            "bpf_map__name": (ctypes.c_char_p, [p]),
            "bpf_map__set_max_entries": (i, [p, u32]),
            "bpf_map__set_pin_path": (i, [p, ctypes.c_char_p]),
            "bpf_map__initial_value": (p, [p, ctypes.POINTER(sz)]),
            "btf__find_by_name_kind": (i, [p, ctypes.c_char_p, u32]),
            "btf__type_by_id": (ctypes.POINTER(_BtfType), [p, u32]),
            "btf__name_by_offset": (ctypes.c_char_p, [p, u32]),
            "bpf_map_lookup_elem": (i, [i, p, p]),
            "bpf_map_update_elem": (i, [i, p, p, ctypes.c_uint64]),
            "bpf_map_delete_elem": (i, [i, p]),
            "bpf_map_get_next_key": (i, [i, p, p]),
            "bpf_map_lookup_elem_flags": (i, [i, p, p, ctypes.c_uint64]),
            "bpf_map_lookup_batch": (
                i,
                [i, p, p, p, p, ctypes.POINTER(u32), ctypes.POINTER(BpfMapBatchOpts)],
            ),
            "bpf_map_update_batch": (
                i,
                [i, p, p, ctypes.POINTER(u32), ctypes.POINTER(BpfMapBatchOpts)],
            ),
            "bpf_map_delete_batch": (
                i,
                [i, p, ctypes.POINTER(u32), ctypes.POINTER(BpfMapBatchOpts)],
            ),
            "bpf_obj_get": (i, [ctypes.c_char_p]),
            "bpf_obj_get_info_by_fd": (i, [i, p, ctypes.POINTER(u32)]),
            "bpf_prog_get_fd_by_id": (i, [u32]),
            "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(BpfTestRunOpts)]),
            "libbpf_num_possible_cpus": (i, []),
        }
        for name, (restype, argtypes) in sigs.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self.libc.vsnprintf.restype = i
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, sz, ctypes.c_char_p, p]

    def _print(self, level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        self.libc.vsnprintf(buf, len(buf), fmt, args)
        with self._log_lock:
            self._log.append(buf.value.decode(errors="replace"))
            del self._log[:-400]
        return 0

    def take_log(self) -> str:
        """Return and clear what libbpf printed since the last call (verifier logs, warnings)."""
        with self._log_lock:
            text = "".join(self._log)
            self._log.clear()
        return text.strip()

    def check(self, rc: int, what: str) -> int:
        """Raise BpfError for libbpf's negative-errno convention; return rc otherwise."""
        if rc < 0:
            err = -rc if rc != -1 else (ctypes.get_errno() or errno.EINVAL)
            raise BpfError(err, what, self.take_log())
        return rc

    def check_ptr(self, ptr: int | None, what: str) -> int:
        if not ptr:
            raise BpfError(ctypes.get_errno() or errno.ENOENT, what, self.take_log())
        return ptr

    # --- map operations on raw fds (work for maps from either loader) ------

    def lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        """Value for `key`, or None when the key is absent."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value_size)
        rc = self.lib.bpf_map_lookup_elem(fd, kbuf, vbuf)
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(err, f"map lookup (fd {fd})")
        return vbuf.raw

    def update(self, fd: int, key: bytes, value: bytes) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        if self.lib.bpf_map_update_elem(fd, kbuf, vbuf, BPF_ANY) < 0:
            raise BpfError(ctypes.get_errno(), f"map update (fd {fd})")

    def lookup_locked(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        """lookup() of a value with a bpf_spin_lock, copied out while the kernel holds it."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value_size)
        if self.lib.bpf_map_lookup_elem_flags(fd, kbuf, vbuf, BPF_F_LOCK) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(err, f"locked map lookup (fd {fd})")
        return vbuf.raw

    def lookup_batch(
        self, fd: int, token: Any, keys: Any, values: Any, count: int, first: bool
    ) -> tuple[int, bool]:
        """BPF_MAP_LOOKUP_BATCH: up to `count` entries into the buffers `keys` and `values`.

        `token` is a buffer the kernel uses to resume (at least 8 bytes, kept
        between calls); `first` starts from the beginning. Returns (entries
        copied, whether the map is exhausted). One syscall per chunk.
        """
        n = ctypes.c_uint32(count)
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        rc = self.lib.bpf_map_lookup_batch(
            fd, None if first else token, token, keys, values, ctypes.byref(n), ctypes.byref(opts)
        )
        if rc < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return int(n.value), True
            raise BpfError(err, f"map lookup batch (fd {fd})")
        return int(n.value), False

    def update_batch(self, fd: int, keys: Any, values: Any, count: int) -> None:
        """BPF_MAP_UPDATE_BATCH of `count` entries (BPF_ANY); bulk set-up for benchmarks."""
        n = ctypes.c_uint32(count)
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        if self.lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(n), ctypes.byref(opts)) < 0:
            raise BpfError(ctypes.get_errno(), f"map update batch (fd {fd}, {n.value}/{count})")

    def delete_batch(self, fd: int, keys: Any, count: int, key_size: int) -> int:
        """BPF_MAP_DELETE_BATCH of `count` keys laid out in `keys`; returns how many were there.

        A key already gone (evicted since it was read) stops the kernel's walk
        with ENOENT: it is skipped and the rest deleted, one syscall per stop.
        """
        base = ctypes.cast(keys, ctypes.c_void_p).value or 0
        opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts))
        done = deleted = 0
        while done < count:
            n = ctypes.c_uint32(count - done)
            rc = self.lib.bpf_map_delete_batch(
                fd, base + done * key_size, ctypes.byref(n), ctypes.byref(opts)
            )
            deleted += int(n.value)
            done += int(n.value)
            if rc < 0:
                err = ctypes.get_errno()
                if err != errno.ENOENT:
                    raise BpfError(err, f"map delete batch (fd {fd})")
                done += 1  # the key the kernel could not find
        return deleted

    def delete(self, fd: int, key: bytes) -> bool:
        """Remove `key`; False when it was not there (someone else removed it first)."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        if self.lib.bpf_map_delete_elem(fd, kbuf) < 0:
            err = ctypes.get_errno()
            if err != errno.ENOENT:
                raise BpfError(err, f"map delete (fd {fd})")
            return False
        return True

    def keys(self, fd: int, key_size: int) -> Iterator[bytes]:
        """Iterate a hash map's keys (snapshot semantics are the kernel's)."""
        prev: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(key_size)
        while self.lib.bpf_map_get_next_key(fd, prev, nxt) == 0:
            yield nxt.raw
            prev = ctypes.create_string_buffer(nxt.raw, key_size)

    def obj_get(self, path: str) -> int:
        """Open a pinned object; raises FileNotFoundError when nothing is pinned there."""
        fd = self.lib.bpf_obj_get(path.encode())
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                raise FileNotFoundError(err, f"nothing pinned at {path}")
            raise BpfError(err, f"bpf_obj_get({path})")
        return int(fd)

    def map_info(self, fd: int) -> MapInfo:
        info = BpfMapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) < 0:
            raise BpfError(ctypes.get_errno(), f"map info (fd {fd})")
        return MapInfo(
            name=info.name.decode(errors="replace"),
            type=info.type,
            key_size=info.key_size,
            value_size=info.value_size,
            max_entries=info.max_entries,
            id=info.id,
        )

    def prog_id(self, fd: int) -> int:
        """The kernel's id of a program we hold an fd of (no privilege needed)."""
        info = BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) < 0:
            raise BpfError(ctypes.get_errno(), f"program info (fd {fd})")
        return int(info.id)

    def prog_name_by_id(self, prog_id: int) -> str:
        """A loaded program's name (the kernel keeps 15 characters): is it ours?"""
        fd = self.lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise BpfError(ctypes.get_errno(), f"program id {prog_id}")
        try:
            info = BpfProgInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            if self.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) < 0:
                raise BpfError(ctypes.get_errno(), f"program info (id {prog_id})")
            return str(info.name.decode(errors="replace"))
        finally:
            os.close(fd)

    def possible_cpus(self) -> int:
        return self.check(self.lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")

    def test_run(self, prog_fd: int, data: bytes, repeat: int) -> tuple[int, int, bytes]:
        """BPF_PROG_TEST_RUN: run a program `repeat` times on `data`.

        Returns (retval, mean ns per run, the packet as the program left it).
        """
        buf = ctypes.create_string_buffer(data, len(data))
        out = ctypes.create_string_buffer(len(data) + 256)
        opts = BpfTestRunOpts(
            sz=ctypes.sizeof(BpfTestRunOpts),
            data_in=ctypes.cast(buf, ctypes.c_void_p),
            data_out=ctypes.cast(out, ctypes.c_void_p),
            data_size_in=len(data),
            data_size_out=len(out),
            repeat=repeat,
        )
        rc = self.lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
        if rc < 0:
            raise BpfError(ctypes.get_errno(), f"BPF_PROG_TEST_RUN (prog fd {prog_fd})")
        return int(opts.retval), int(opts.duration), out.raw[: opts.data_size_out]

    # --- BTF: where a tunable lives inside .rodata ---------------------------

    def datasec_offsets(self, obj: int, section: str) -> dict[str, tuple[int, int]]:
        """Variable name -> (offset, size) inside a data section, from the object's BTF."""
        btf = self.lib.bpf_object__btf(obj)
        if not btf:
            raise BpfError(errno.ENOENT, "object has no BTF (build it with clang -g)")
        type_id = self.lib.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if type_id < 0:
            return {}
        sec = self.lib.btf__type_by_id(btf, type_id)
        vlen = sec.contents.info & 0xFFFF
        base = ctypes.cast(sec, ctypes.c_void_p).value or 0
        infos = (_BtfVarSecinfo * vlen).from_address(base + ctypes.sizeof(_BtfType))
        result: dict[str, tuple[int, int]] = {}
        for entry in infos:
            var = self.lib.btf__type_by_id(btf, entry.type)
            name = self.lib.btf__name_by_offset(btf, var.contents.name_off)
            result[(name or b"").decode()] = (entry.offset, entry.size)
        return result


@functools.cache
def libbpf() -> LibBpf:
    """The process-wide libbpf handle (the C library's print hook is global anyway)."""
    return LibBpf()


def _load_libbpf() -> ctypes.CDLL:
    """libbpf 1.x by its soname, which the dynamic loader finds by itself; failing that,
    whatever version ctypes.util finds.

    The search is only the fallback: ctypes.util runs `ldconfig -p` in a subprocess and
    imports tempfile and random, start-up time and memory (issue 16) the usual case does
    without.
    """
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        path = find_library("bpf")
        if path is None or path == "libbpf.so.1":
            raise
        return ctypes.CDLL(path, use_errno=True)
