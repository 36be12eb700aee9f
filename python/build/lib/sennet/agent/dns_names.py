"""Query names from the data plane's DNS_NAMES keys, as text.

The kernel keeps the first question's QNAME in wire format (length-prefixed
labels, the root's zero byte, zero padding after it), with ASCII upper case
already folded to lower case there: resolvers that randomise case (DNS 0x20)
then share one entry per name. Text follows the zone-file convention: labels
joined by dots, no trailing dot, "." for the root, and a byte that is not
printable ASCII (or is a dot or backslash inside a label) escaped as \\DDD or
\\. so two different names never read the same.
"""

from __future__ import annotations

_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}


def _label_text(label: bytes) -> str:
    out = []
    for b in label:
        if b in _PLAIN:
            out.append(chr(b))
        elif b in (ord("."), ord("\\")):
            out.append("\\" + chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def decode_name(wire: bytes) -> str | None:
    """Text of a wire-format name, or None if `wire` holds none (never so from the kernel)."""
    labels: list[str] = []
    pos = 0
    while pos < len(wire):
        length = wire[pos]
        if length == 0:
            return ".".join(labels) if labels else "."
        if length > 63 or pos + 1 + length > len(wire):
            return None
        labels.append(_label_text(wire[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return None
