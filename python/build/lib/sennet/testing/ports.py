"""A free TCP port on loopback, for servers that must be told their port in advance."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick; a race is possible but rare).

    Prefer port 0 with a ready file where the server supports it (the control
    plane does); this is for peers that need the number up front (QEMU's SSH
    forward, several processes sharing one port with SO_REUSEPORT).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
