"""DNS over UDP/53, once per interval: counts by type and rcode, latency, unanswered, top names.

The data plane (bpf/dns.h) counts and matches; the agent does what needs a
clock or a sort. A query still pending after `dns_timeout` has lost its
response: the agent deletes its entry and counts it unanswered (cumulative for
this agent process; a restarted agent starts that one count again, the kernel's
counters continue). Expiring here, not in the kernel, keeps the per-packet cost
flat: the data plane never scans.

The top lists come from the DNS_NAMES table (LRU, 4096 names): counts since a
name entered it, so the busiest names are exact while the rarely seen ones may
be forgotten and start again. Each list is bounded by `dns_top_names`, ties go
to the name that sorts first, so the output is the same for the same table.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from sennet.agent.datapath import dns_layout as dl
from sennet.agent.datapath import layout, tally
from sennet.agent.datapath.histograms import HistogramReader
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.record import u64_sum
from sennet.agent.dns_names import decode_name
from sennet.agent.telemetry import DnsReport, NameCount

_TS_NS = struct.Struct("<Q")
_COUNTS = struct.Struct("<QQ")  # struct sennet_dns_name_count: queries, failures


class DnsReader:
    def __init__(
        self,
        map_fds: dict[str, int],
        timeout_s: float,
        top_names: int,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """`clock_ns` must be CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns()."""
        self.counters_fd = map_fds[dl.MAP_DNS_COUNTERS]
        self.pending_fd = map_fds[dl.MAP_DNS_PENDING]
        self.names_fd = map_fds[dl.MAP_DNS_NAMES]
        self.histograms = HistogramReader(map_fds[layout.MAP_HISTOGRAMS])
        self.timeout_ns = int(timeout_s * 1e9)
        self.top_names = top_names
        self.clock_ns = clock_ns
        self.ncpus = libbpf().possible_cpus()

    def counters(self) -> dict[dl.DnsSlot, int]:
        """Every DNS_COUNTERS slot, summed over CPUs (cumulative)."""
        lib = libbpf()
        out = {}
        for slot in dl.DnsSlot:
            raw = lib.lookup(self.counters_fd, int(slot).to_bytes(4, "little"), 8 * self.ncpus)
            out[slot] = u64_sum(raw, self.ncpus)
        return out

    def expire(self) -> int:
        """Delete queries pending longer than the timeout; returns how many (added to the
        pinned UNANSWERED slot, so the total survives agent restarts)."""
        lib = libbpf()
        deadline = self.clock_ns() - self.timeout_ns
        expired = 0
        for key in list(lib.keys(self.pending_fd, dl.PENDING_KEY.itemsize)):
            raw = lib.lookup(self.pending_fd, key, dl.PENDING.itemsize)
            if raw is None:
                continue  # answered since the key list was taken
            ts = _TS_NS.unpack_from(raw, dl.PENDING.offset("ts_ns"))[0]
            # The kernel may match it between the read and the delete: only a delete
            # that found the entry counts, so a query is never both answered and unanswered.
            if ts < deadline and lib.delete(self.pending_fd, key):
                expired += 1
        tally.add_to_slot(self.counters_fd, dl.DnsSlot.UNANSWERED, expired)
        return expired

    def names(self) -> dict[str, tuple[int, int]]:
        """Every name in the table: text -> (queries, failures)."""
        lib = libbpf()
        out: dict[str, tuple[int, int]] = {}
        for key in list(lib.keys(self.names_fd, dl.NAME_MAX)):
            raw = lib.lookup(self.names_fd, key, dl.NAME_COUNT.itemsize)
            name = decode_name(key)
            if raw is None or name is None:
                continue
            queries, failures = _COUNTS.unpack_from(raw)
            out[name] = (queries, failures)
        return out

    def read(self) -> DnsReport:
        """One interval: expire, then read everything into a report."""
        self.expire()
        counts = self.counters()
        names = self.names()
        return DnsReport(
            queries_by_type={dl.slot_label(s): counts[s] for s in dl.QUERY_SLOTS},
            responses_by_rcode={dl.slot_label(s): counts[s] for s in dl.RCODE_SLOTS},
            latency=self.histograms.read(layout.Histogram.DNS_LATENCY),
            unanswered_total=counts[dl.DnsSlot.UNANSWERED],
            malformed_total=counts[dl.DnsSlot.MALFORMED],
            top_queried=self._top(names, 0),
            top_failing=self._top(names, 1),
        )

    def _top(self, names: dict[str, tuple[int, int]], field: int) -> tuple[NameCount, ...]:
        ranked = sorted(
            ((n, c[field]) for n, c in names.items() if c[field] > 0), key=lambda x: (-x[1], x[0])
        )
        return tuple(NameCount(n, c) for n, c in ranked[: self.top_names])
