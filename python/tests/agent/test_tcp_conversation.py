"""A scapy-built TCP conversation, as a mirror port delivers it: both directions on ingress.

Every segment is written out here, so the expected figures follow from the
frames themselves: which handshakes complete, which SYN or SYN/ACK repeats its
ISN (Karn: no RTT sample from it), which segments reset, advertise a zero
window or carry an impossible data offset. Both loaders must give exactly
these figures, IPv4 and IPv6 alike, and keep handshakes on different VLANs apart.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw

from sennet.agent.datapath import layout
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.pinned_status import read_status
from sennet.agent.tcp_health import TcpHealthReader
from sennet.testing.netlab import VethPair
from tests.datapath_harness import LOADERS, running
from tests.frames import MAC_A, MAC_B

pytestmark = pytest.mark.kernel

CLIENT, SERVER = "10.7.0.1", "10.7.0.2"
CLIENT6, SERVER6 = "2001:db8::1", "2001:db8::2"


def seg(src: str, dst: str, sport: int, dport: int, vlan: int = 0, **tcp: Any) -> bytes:
    l3: Packet = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    l2: Packet = Ether(src=MAC_B, dst=MAC_A)
    if vlan:
        l2 = l2 / Dot1Q(vlan=vlan)
    return bytes(l2 / l3 / TCP(sport=sport, dport=dport, **tcp))


def handshake(
    cport: int,
    isn: int,
    sisn: int,
    syns: int = 1,
    synacks: int = 1,
    v6: bool = False,
    vlan: int = 0,
) -> list[bytes]:
    """SYN (repeated `syns` times), SYN/ACK (`synacks` times), the client's ACK."""
    c, s = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
    syn = seg(c, s, cport, 80, vlan, flags="S", seq=isn)
    synack = seg(s, c, 80, cport, vlan, flags="SA", seq=sisn, ack=isn + 1)
    ack = seg(c, s, cport, 80, vlan, flags="A", seq=isn + 1, ack=sisn + 1)
    return [syn] * syns + [synack] * synacks + [ack]


def interleaved(*conversations: list[bytes]) -> list[bytes]:
    return [f for frames in zip(*conversations, strict=True) for f in frames]


def conversation() -> list[bytes]:
    frames = handshake(40001, 1000, 5000)  # samples both
    frames += handshake(40002, 2000, 6000, syns=2)  # Karn: no SYN sample; one retransmit
    frames += handshake(40003, 3000, 7000, synacks=2)  # no SYN/ACK sample; one retransmit
    frames += handshake(40006, 9000, 9900, v6=True)  # samples both
    # the same addresses, ports and ISNs on two VLANs of a mirror port, interleaved: two
    # handshakes (two samples each), neither a repeat of the other
    frames += interleaved(*(handshake(40010, 1100, 5100, vlan=v) for v in (10, 20)))
    # refused: SYN, then the server's RST/ACK
    frames += [seg(CLIENT, SERVER, 40004, 81, flags="S", seq=4000)]
    frames += [seg(SERVER, CLIENT, 81, 40004, flags="RA", seq=0, ack=4001)]
    # unanswered
    frames += [seg(CLIENT, SERVER, 40005, 82, flags="S", seq=8000)]
    # the server of the first connection advertises a zero window; a RST with window 0
    frames += [seg(SERVER, CLIENT, 80, 40001, flags="A", seq=5001, ack=1001, window=0)]
    frames += [seg(CLIENT, SERVER, 40007, 83, flags="R", seq=1, window=0)]
    # data offsets: 4 words (below the fixed header), 15 words (past the packet)
    frames += [seg(CLIENT, SERVER, 40008, 80, flags="A", dataofs=4)]
    frames += [seg(CLIENT, SERVER, 40009, 80, flags="PA", dataofs=15) + bytes(Raw(b"x" * 8))]
    return frames


@pytest.mark.parametrize("loader", LOADERS)
def test_a_mirrored_conversation_gives_the_figures_its_frames_imply(
    net: VethPair, pin_root: Path, loader: str
) -> None:
    with running(net, pin_root / "p", loader) as dp:
        assert dp.manager.loaded is not None
        reader = TcpHealthReader(dp.manager.loaded.map_fds, handshake_timeout_s=0.2)
        net.send_to_a(conversation())
        time.sleep(0.3)  # the unanswered SYN is now older than the timeout
        report = reader.read()
        counters = reader.counters()
        pending = list(libbpf().keys(reader.expiry.handshakes_fd, layout.HS_KEY.itemsize))
        status = read_status(pin_root / "p")["tcp"]
    assert report.syn_rtt.count == 5  # 40001, 40003, the IPv6 one, both VLANs
    assert report.synack_rtt.count == 5  # 40001, 40002, the IPv6 one, both VLANs
    assert report.retransmits_total == 2  # the repeated SYN and SYN/ACK
    assert counters[layout.TcpCounter.SYN_RETRIED] == 1
    assert report.resets_by_direction == {"rx": 2, "tx": 0}
    assert report.zero_windows_total == 1
    assert report.malformed_total == 2
    assert report.attempts_unanswered_total == 1
    assert pending == []
    # `sennet-agent status` reads the same pinned counters, agent or not
    assert status == {
        "rst_rx": 2,
        "rst_tx": 0,
        "retrans": 2,
        "zero_window": 1,
        "unanswered": 1,
        "malformed": 2,
        "syn_retried": 1,
    }
