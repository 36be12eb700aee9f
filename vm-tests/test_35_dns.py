"""DNS on the appliance's own kernel (the pinned 6.1): hand-built messages into the monitored NIC,
read back from the pinned DNS maps in the guest with the agent's own reader."""

from __future__ import annotations

import json
import shlex

from sennet.common.retry import retry
from sennet.testing.dnsframes import (
    WELL_FORMED_COUNTS,
    WELL_FORMED_NAMES,
    addressed_to,
    malformed_cases,
    well_formed,
)
from sennet.testing.vm.appliance import Appliance
from sennet.testing.vm.guest import PY
from sennet.testing.vm.machine import Machine
from sennet.testing.vm.traffic import GUEST_MON_MAC

READ = """
import json
from pathlib import Path
from sennet.agent.datapath.pins import open_pinned
from sennet.agent.dns import DnsReader
r = DnsReader(open_pinned(Path("/sys/fs/bpf/sennet")), 3600.0, 10)
print(json.dumps([{s.name: v for s, v in r.counters().items()}, r.names()]))
"""

Names = dict[str, list[int]]


def dns_state(machine: Machine) -> tuple[dict[str, int], Names]:
    counts, names = json.loads(machine.succeed(f"{PY} -c {shlex.quote(READ)}"))
    return counts, names


def test_dns_messages_are_parsed_counted_and_named_on_the_appliance_kernel(
    appliance: Appliance,
) -> None:
    bad = malformed_cases()
    frames = addressed_to([c.frame for c in bad] + well_formed(), GUEST_MON_MAC)
    before, names_before = dns_state(appliance.machine)
    appliance.tap.send(frames)

    def arrived(last: bool) -> tuple[dict[str, int], Names] | None:
        counts, names = dns_state(appliance.machine)
        return (counts, names) if counts["SEEN"] - before["SEEN"] >= len(frames) else None

    after, names_after = retry(arrived, 30, interval=0.5, what="DNS frames counted in the guest")
    # UNANSWERED is the guest agent's own expiry of pending queries (dns_timeout after
    # they were sent): when it runs is not this test's subject.
    delta = {k: v - before[k] for k, v in after.items() if v != before[k] and k != "UNANSWERED"}
    assert delta == {
        **WELL_FORMED_COUNTS,
        "SEEN": len(frames),
        "MALFORMED": len(bad),
    }
    grown = {
        name: (q - names_before.get(name, [0, 0])[0], f - names_before.get(name, [0, 0])[1])
        for name, (q, f) in names_after.items()
        if [q, f] != names_before.get(name)
    }
    assert grown == WELL_FORMED_NAMES
