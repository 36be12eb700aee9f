"""Names from DNS_NAMES keys as text; dnspython reading the same wire bytes is the oracle."""

from __future__ import annotations

import dns.name
import pytest

from sennet.agent.dns_names import decode_name

PAD = 256


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00",
        b"\x03www\x07example\x03com\x00",
        b"\x01a\x00",
        b"\x03a.b\x03c\\d\x00",  # a dot and a backslash inside labels
        b"\x04a\x00\xff\x20\x02xn\x00",  # bytes that are not printable ASCII
        b"\x3f" + b"z" * 63 + b"\x00",
    ],
)
def test_decoded_names_read_as_dnspython_reads_the_same_wire(wire: bytes) -> None:
    key = wire + b"\x00" * (PAD - len(wire))
    expected = dns.name.from_wire(wire, 0)[0].to_text(omit_final_dot=True) or "."
    assert decode_name(key) == (expected if expected != "@" else ".")


def test_a_key_that_holds_no_name_decodes_to_none() -> None:
    assert decode_name(b"\x05ab") is None  # the label runs past the key
    assert decode_name(b"\x40" + b"a" * 80) is None  # a label longer than 63
    assert decode_name(b"\x01a") is None  # no root byte
