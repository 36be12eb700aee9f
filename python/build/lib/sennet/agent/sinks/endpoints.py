"""Which control-plane address the agent talks to now: failover and failback.

The operator lists replicas in order of preference ("A,B,C"). All of them
serve one database, so enrolment and the agent token hold for every address
and moving between them needs nothing but a new connection. This module keeps
only the choice and its history; the sink decides what counts as a failure
(a transport failure: the replica is gone or hung, not an authentication
refusal) and does the calls.

Failing over moves to the next address in the list, cycling. While away from
the first address the sink probes it again, but no more often than
`failback_s`: returning at the first success would flap between a replica that
restarts in a loop and a healthy one, and probing every interval would add a
failed call to each heartbeat while the preferred replica stays down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def address_complaint(address: str) -> str | None:
    """Why `address` is not a usable "host:port" for gRPC, or None if it is."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return f'"host:port", not {address!r}'
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"a port 1..65535 in {address!r}"
    if any(c.isspace() for c in host) or (host.startswith("[") != host.endswith("]")):
        return f"a host name or address in {address!r}"
    return None


def split_addresses(text: str) -> tuple[str, ...]:
    """The comma-separated list, in order; raises ValueError naming the first bad entry."""
    addresses = tuple(part.strip() for part in text.split(","))
    for position, address in enumerate(addresses, 1):
        complaint = address_complaint(address)
        if complaint:
            raise ValueError(f"address {position} of {len(addresses)}: {complaint}")
    if len(set(addresses)) != len(addresses):
        twice = next(a for a in addresses if addresses.count(a) > 1)
        raise ValueError(f"each address once; {twice!r} is listed twice")
    return addresses


class Rotation:
    """The address in use, the failovers so far, and when to probe the preferred one again.

    Not thread-safe: the sink's sender thread alone drives it (readers take the
    plain attributes, which are replaced whole).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        failback_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ValueError("at least one control-plane address")
        self.addresses = tuple(addresses)
        self.failback_s = failback_s
        self._clock = clock
        self.index = 0
        self.failovers = 0
        self.failbacks = 0
        self._last_probe = 0.0  # when we left or last tried the preferred address

    @property
    def current(self) -> str:
        return self.addresses[self.index]

    @property
    def preferred(self) -> str:
        return self.addresses[0]

    def fail_over(self) -> tuple[str, str] | None:
        """Move to the next address after a transport failure: (from, to), or None if
        there is no other address to move to."""
        if len(self.addresses) == 1:
            return None
        before = self.current
        if self.index == 0:
            self._last_probe = self._clock()
        self.index = (self.index + 1) % len(self.addresses)
        self.failovers += 1
        return before, self.current

    def rounds_failed(self, transport_failures: int) -> int:
        """Times every address has failed in a row after `transport_failures` consecutive
        failures; 0 while an address is left to try at once (the caller backs off by it)."""
        n = len(self.addresses)
        return 0 if transport_failures % n else transport_failures // n

    def probe_due(self) -> bool:
        """True when the preferred address should be tried before the current one.

        Calling it while due starts a new failback period, so a failed probe is
        not repeated before `failback_s` has passed again."""
        if self.index == 0 or self._clock() - self._last_probe < self.failback_s:
            return False
        self._last_probe = self._clock()
        return True

    def fail_back(self) -> str:
        """The preferred address answered: use it again; returns the address left."""
        before = self.current
        self.index = 0
        self.failbacks += 1
        return before
