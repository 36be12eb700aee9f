"""A C struct's bytes as named fields: offsets, size, and a struct.Struct to unpack one.

The data plane's structs (bpf/sennet_tc.h, sennet_dns.h) use fixed-width
little-endian fields with their padding written out, so a `struct` format
with explicit pad fields reproduces them byte for byte. Each field unpacks
to exactly one value: an integer, or `bytes` for a byte array ("16s"), or a
tuple for an array of integers ("2Q"). The standard library does the
decoding; the layout tests compare every offset here with the C compiler's.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

Value = int | bytes | tuple[int, ...]
U64_MASK = (1 << 64) - 1  # per-CPU sums wrap like the kernel's u64 counters


class Layout:
    """Named fields at fixed offsets; `fields[name]` is (struct code, offset)."""

    def __init__(self, fields: Sequence[tuple[str, str]]) -> None:
        self.names = tuple(name for name, _ in fields)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate field name in {self.names}")
        self.fields: dict[str, tuple[str, int]] = {}
        self._parts: list[tuple[str, struct.Struct, bool]] = []
        offset = 0
        for name, code in fields:
            part = struct.Struct("<" + code)
            self.fields[name] = (code, offset)
            # "16s" and "B" unpack to one value; "2Q" to a tuple of two.
            many = code[0].isdigit() and not code.endswith("s")
            self._parts.append((name, part, many))
            offset += part.size
        self.itemsize = offset
        self.struct = struct.Struct("<" + "".join(code for _, code in fields))

    def offset(self, name: str) -> int:
        return self.fields[name][1]

    def unpack(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Value]:
        """One record at `offset` as name -> value (for the few records read one by one)."""
        if len(buf) - offset < self.itemsize:
            raise ValueError(f"{len(buf) - offset} bytes at offset {offset}: need {self.itemsize}")
        out: dict[str, Value] = {}
        for name, part, many in self._parts:
            values = part.unpack_from(buf, offset + self.fields[name][1])
            out[name] = values if many else values[0]
        return out

    def pack(self, **values: Value) -> bytes:
        """One record from field values (absent fields are zero)."""
        buf = bytearray(self.itemsize)
        for name in values:
            if name not in self.fields:
                raise KeyError(f"no field {name!r} in this layout ({', '.join(self.names)})")
        for name, part, many in self._parts:
            if name not in values:
                continue
            value = values[name]
            args = value if many and isinstance(value, tuple) else (value,)
            part.pack_into(buf, self.fields[name][1], *args)
        return bytes(buf)


def u64_sum(raw: bytes | None, count: int) -> int:
    """The sum of the first `count` little-endian u64s of `raw` (a per-CPU value), 0 if absent.

    Per-CPU counters wrap at 2**64 like the kernel's, so the sum does too.
    """
    if raw is None:
        return 0
    total: int = sum(struct.unpack_from(f"<{count}Q", raw))
    return total & U64_MASK
