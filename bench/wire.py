"""The frames the benchmark sends, built by hand so bench needs no scapy.

Sizes are frame lengths (Ethernet header included, no FCS; untagged and not
aggregated, so skb->len and the bytes on the wire agree): SMALL_FRAME is the
classic 64-byte minimum, LARGE_FRAME a full 1514-byte Ethernet frame, which is
above the large-packet threshold the benchmark loads with, so it raises exactly
one `large_packet` event and nothing else (a well-formed UDP/IPv4 frame between
two different addresses).
"""

from __future__ import annotations

import struct

SMALL_FRAME = 64
LARGE_FRAME = 1514
LARGE_THRESHOLD = 1000  # events for frames > 1000 bytes: LARGE_FRAME raises one, SMALL_FRAME none

# The receiver never owns this MAC: like a mirror port, the frames are PACKET_OTHERHOST and
# the IP layer discards them right after TC ingress, which keeps the bare path short (so the
# BPF share of it is as large as it gets).
DST_MAC = bytes.fromhex("02000000000a")
SRC_MAC = bytes.fromhex("02000000000b")
SRC_IP = bytes([10, 1, 0, 1])
DST_IP = bytes([10, 1, 0, 2])
SPORT, DPORT = 1111, 2222


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of exactly `size` bytes with a valid IP checksum."""
    payload = size - 14 - 20 - 8
    if payload < 0:
        raise ValueError(f"a UDP/IPv4 frame needs at least 42 bytes, not {size}")
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + payload, 0, 0x4000, 64, 17, 0, SRC_IP, DST_IP
    )
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", SPORT, DPORT, 8 + payload, 0)
    return DST_MAC + SRC_MAC + b"\x08\x00" + ip + udp + b"x" * payload


def trafgen_config(frame: bytes) -> str:
    """The frame as a trafgen packet block: fixed bytes, sent round and round."""
    return "{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n"
