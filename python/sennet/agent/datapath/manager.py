"""eBPF manager: load with the chosen loader, assign counter slots, attach, detach.

The order matters for exact counts and for restarts: slots are assigned before
any filter is attached (so no packet lands in the "unmapped" slot), pinned maps
are reused (so counters continue), and filters are replaced in place (so a
restart never leaves a hook empty or doubled).

A configured interface that does not exist yet is not an error: it waits
(`waiting_for_interface`, naming it) and is attached by `reconcile` as soon as
it appears, which the run loop calls on every netlink link event and every
interval. Names are checked when the configuration is read, so a name that can
never exist still fails at start.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sennet.agent.datapath import bcc_loader, early, layout, libbpf_loader, slots, tc, xdp
from sennet.agent.datapath.bpffs import ensure_pin_dir
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.statedir import Untrusted, read_root_file, refuse
from sennet.common.files import write_atomic
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")

OWNED_FILE = "tc-owned.json"  # clsact qdiscs this agent created, so detach removes only those


@dataclass(frozen=True)
class Attached:
    ifname: str
    ifindex: int
    slot: int
    rx_hook: str = "tc"  # "tc", or "xdp-native" / "xdp-generic" (what the kernel gave)


@dataclass
class DatapathManager:
    options: DatapathOptions
    loader: str
    tc_priority: int
    state_dir: Path
    netns: str = ""
    attach_rx: str = "tc"  # the `attach` setting: "tc" or "xdp" for the receive side
    xdp_mode: str = "auto"  # the `xdp_mode` setting
    loaded: LoadedDatapath | None = None
    attached: list[Attached] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # configured, not present yet
    # False once root is given up: clsact qdiscs created later are remembered in memory
    # only (a restarted agent then leaves such an emptied qdisc in place).
    persist_owned: bool = True
    _owned_now: set[int] | None = None  # the clsact ifindexes we own, once known
    _tc: tc.TcAttacher | None = None
    _gone: set[int] = field(default_factory=set)  # ifindexes already reported missing
    # The boot-time loader's record (`early_attach_file`); None: neither adopt nor plan.
    early_file: Path | None = None
    image_digest: str = ""  # the booted image's: rc.boot runs only a plan made for it
    _stale_early: early.Handover | None = None  # a boot-time load not adopted: retired
    _early_clsact: set[int] = field(default_factory=set)  # clsact qdiscs it created

    def load(self, ifnames: tuple[str, ...] = ()) -> LoadedDatapath:
        """Load, or adopt what the boot-time loader attached for exactly this plan."""
        ensure_pin_dir(self.options.pin_dir)
        if self.loader == "bcc":
            self.loaded = bcc_loader.load(self.options)
            return self.loaded
        self.loaded = self._adopt(ifnames)
        if self.loaded is None:
            self.loaded = libbpf_loader.load(self.options)
        return self.loaded

    def plan(self, ifnames: tuple[str, ...]) -> str:
        """The boot-time loader's plan for this configuration; "" where it cannot stand in
        (bcc, the receive side at XDP, interfaces in another namespace)."""
        if self.loader != "libbpf" or self.attach_rx != "tc" or self.netns or not ifnames:
            return ""
        return early.plan_text(
            self.options, self.tc_priority, tc.HANDLE, ifnames, self.image_digest
        )

    def _adopt(self, ifnames: tuple[str, ...]) -> LoadedDatapath | None:
        if self.early_file is None:
            return None
        handover = early.Handover(self.early_file, self.options)
        loaded = handover.adopt(self.plan(ifnames))
        if handover.stale is not None:
            self._stale_early = handover
        elif loaded is not None:
            self._early_clsact = handover.created_clsact
        return loaded

    def _save_plan(self, ifnames: tuple[str, ...]) -> None:
        """While we are root (rc.boot reads it as root at the next boot)."""
        if self.early_file is not None and self.persist_owned:
            early.save_plan(self.state_dir / early.PLAN_FILE, self.plan(ifnames))

    @property
    def tc(self) -> tc.TcAttacher:
        if self._tc is None:
            self._tc = tc.TcAttacher(self.tc_priority, self.netns)
        return self._tc

    def other_threads(self) -> list[Callable[[Callable[[], None]], None]]:
        """How to run a function on each thread of ours that holds a namespace (for
        `run_as`, which must reduce every thread that exists when it runs)."""
        if self._tc is not None and self._tc.ns.on_own_thread:
            return [self._tc.ns.run]
        return []

    def _owned(self) -> set[int]:
        if self._owned_now is not None:
            return set(self._owned_now)
        try:
            raw = read_root_file(self.state_dir / OWNED_FILE)
        except Untrusted as err:
            refuse(err)
            raw = None
        try:
            found = json.loads(raw)["clsact_ifindexes"] if raw is not None else []
            return {int(i) for i in found}
        except (ValueError, KeyError, TypeError):
            return set()

    def _save_owned(self, owned: set[int]) -> None:
        """Remember; and write the file while we may (root, before `run_as` gives root up:
        the state directory's top is root's, and the file is read by root at the next start)."""
        self._owned_now = set(owned)
        if not self.persist_owned:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"clsact_ifindexes": sorted(owned)}).encode()
        write_atomic(self.state_dir / OWNED_FILE, blob, 0o644)

    def attach(self, ifnames: tuple[str, ...]) -> list[Attached]:
        """Slot and attach the interfaces present now; the others wait for `reconcile`."""
        assert self.loaded is not None, "load() first"
        indexes = {}
        for name in ifnames:
            ifindex = self.tc.lookup(name)
            if ifindex is None:
                self.waiting.append(name)
            else:
                indexes[name] = ifindex
        live = self.tc.live()
        slot_of = slots.assign(
            self.loaded.map_fds["IFSLOTS"],
            self.loaded.map_fds["COUNTERS"],
            indexes.values(),
            live,
        )
        owned = (self._owned() | self._early_clsact) & set(live)
        self._save_owned(owned)
        for name, ifindex in indexes.items():
            hook = self._hook(ifindex)
            self.attached.append(Attached(name, ifindex, slot_of[ifindex], hook))
            self._log_attached(name, ifindex, slot_of[ifindex], hook, late=False)
        if self._stale_early is not None:
            self._stale_early.retire(self.tc, [a.ifindex for a in self.attached])
            self._stale_early = None
        self._save_plan(ifnames)
        if self.waiting:
            event(
                log,
                "waiting_for_interface",
                logging.WARNING,
                ifnames=",".join(self.waiting),
                netns=self.netns or "own",
                note="attached as soon as it appears",
            )
        return self.attached

    def _hook(self, ifindex: int) -> str:
        """Our clsact (remembered if we made it), the egress filter and the receive hook
        (TC ingress or XDP) on one interface; returns the receive hook.

        The receive side is hooked once: switching `attach` removes our program from the
        other hook once the new one is in place (for that moment a frame may be counted
        at both; none is missed). XDP goes first, so a refusal leaves nothing of ours."""
        assert self.loaded is not None
        mode = ""
        if self.attach_rx == "xdp":  # first: a refusal (someone else's program) changes nothing
            want = xdp.XdpMode(self.xdp_mode)
            mode = self.tc.run(xdp.attach, ifindex, self.loaded.xdp_fd, want)
        if self.tc.ensure_clsact(ifindex):
            self._save_owned(self._owned() | {ifindex})
        self.tc.attach(ifindex, tc.PARENT_EGRESS, self.loaded.egress_fd, layout.PROGRAM_EGRESS)
        if not mode:
            self.tc.attach(
                ifindex, tc.PARENT_INGRESS, self.loaded.ingress_fd, layout.PROGRAM_INGRESS
            )
            self.tc.run(xdp.detach, ifindex, self.loaded.xdp_fd)
            return "tc"
        self.tc.detach(ifindex, tc.PARENT_INGRESS)
        return f"xdp-{mode}"

    def _log_attached(self, name: str, ifindex: int, slot: int, hook: str, late: bool) -> None:
        assert self.loaded is not None
        event(
            log,
            "attached",
            ifname=name,
            ifindex=ifindex,
            slot=slot,
            loader=self.loaded.loader,
            prio=self.tc_priority,
            rx_hook=hook,
            late=late,
        )

    def _attach_appeared(self) -> list[str]:
        """Attach every waiting interface that exists now; the names attached."""
        assert self.loaded is not None
        found = {name: self.tc.lookup(name) for name in self.waiting}
        present = {name: ifindex for name, ifindex in found.items() if ifindex is not None}
        if not present:
            return []
        live = self.tc.live()
        slot_of = slots.assign(
            self.loaded.map_fds["IFSLOTS"],
            self.loaded.map_fds["COUNTERS"],
            present.values(),
            live,
            reserved=[a.slot for a in self.attached],
        )
        for name, ifindex in present.items():
            hook = self._hook(ifindex)
            self.attached.append(Attached(name, ifindex, slot_of[ifindex], hook))
            self.waiting.remove(name)
            self._log_attached(name, ifindex, slot_of[ifindex], hook, late=True)
        return list(present)

    def _ours(self, ifindex: int) -> bool:
        """Both of our hooks are on the interface (a `tc filter del` or `ip link set xdp
        off` may have taken one)."""
        parents = [tc.PARENT_EGRESS]
        if self.attach_rx == "xdp":
            assert self.loaded is not None
            if not xdp.ours(self.tc.run(xdp.query, ifindex), self.loaded.xdp_fd):
                return False
        else:
            parents.append(tc.PARENT_INGRESS)
        for parent in parents:
            if not any(
                f.prio == self.tc_priority and f.handle == tc.HANDLE and f.name.startswith("sennet")
                for f in self.tc.filters(ifindex, parent)
            ):
                return False
        return True

    def reconcile(self) -> list[str]:
        """Re-attach every monitored interface that came back or lost our filters.

        An interface deleted and created again (a USB NIC replugged, a veth
        recreated) has a new ifindex: it gets its old counter slot back, so its
        counters continue under its name, and our filters again. Called every
        interval by the run loop, so a lost hook is restored within one. Returns
        the names re-attached, and attaches interfaces that were waiting to appear.
        """
        assert self.loaded is not None, "load() first"
        done = self._attach_appeared() if self.waiting else []
        for n, a in enumerate(self.attached):
            found = self.tc.lookup(a.ifname)
            if found is None:
                if a.ifindex not in self._gone:
                    self._gone.add(a.ifindex)
                    event(
                        log, "interface_gone", logging.WARNING, ifname=a.ifname, ifindex=a.ifindex
                    )
                continue
            ifindex = found
            if ifindex == a.ifindex and self._ours(ifindex):
                continue
            slots.move(self.loaded.map_fds["IFSLOTS"], a.ifindex, ifindex, a.slot)
            hook = self._hook(ifindex)
            self.attached[n] = Attached(a.ifname, ifindex, a.slot, hook)
            self._gone.discard(a.ifindex)
            event(log, "reattached", ifname=a.ifname, ifindex=ifindex, was=a.ifindex, slot=a.slot)
            done.append(a.ifname)
        return done

    def detach(self) -> None:
        """Remove our filters; remove a clsact qdisc only if we created it and it is now empty."""
        owned = self._owned()
        for a in self.attached:
            removed = self.tc.detach(a.ifindex, tc.PARENT_INGRESS)
            removed = self.tc.detach(a.ifindex, tc.PARENT_EGRESS) or removed
            fd = self.loaded.xdp_fd if self.loaded is not None else -1
            removed = self.tc.run(xdp.detach, a.ifindex, fd) or removed
            if a.ifindex in owned and self.tc.remove_clsact_if_empty(a.ifindex):
                owned.discard(a.ifindex)
            event(log, "detached", ifname=a.ifname, ifindex=a.ifindex, removed=removed)
        self._save_owned(owned)
        self.attached.clear()

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
        if self._tc is not None:
            self._tc.close()
            self._tc = None


def kernel_release() -> str:
    return os.uname().release
