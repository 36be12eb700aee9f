"""Counting before Python: the plan the boot-time loader follows, and adopting what it loaded.

Under TCG the agent's interpreter and imports take 5-6 s of a boot before the first
program is loaded. So the agent, once attached, writes down what it loaded and where
(`plan_text`, in root's zone of the state directory); at the next boot rc.boot hands that
plan to `sennet-early-attach` (bpf/loader/early_attach.c), which loads the same object
the same way (`DatapathOptions.load_spec`, shared with the Python loader), pins the maps
where the agent pins them and the rest under `PIN_DIR/early`, and attaches the filters
at the agent's priority and handle, in about the verifier's time after init starts.

The agent then adopts those programs and maps instead of loading its own (`adopt`), so
nothing counted meanwhile is lost: not the counters, not the flows, not the events
waiting in the ring. It adopts only a load made from exactly the plan it would write
now; anything else (a changed configuration, another image) is retired once the
agent's own programs are in place (`retire`), keeping the pinned counts when the maps'
shapes still match.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sennet.agent import marks
from sennet.agent.datapath import layout, tc
from sennet.agent.datapath.libbpf import libbpf
from sennet.agent.datapath.loader_types import DatapathOptions, LoadedDatapath
from sennet.agent.datapath.pins import check_pinned_maps, remove_pins, unpin_early
from sennet.agent.statedir import Untrusted, read_root_file, refuse
from sennet.common.errors import UserError
from sennet.common.files import write_atomic
from sennet.common.log import event

log = logging.getLogger("sennet.agent.datapath")

PLAN_FILE = "early-attach.plan"  # in state_dir: root's, read by rc.boot at the next boot
FORMAT = "1"
RESULT = "result.attached="  # the loader's lines after the plan: ifname:ifindex:slot:created


def plan_text(
    opts: DatapathOptions, tc_priority: int, tc_handle: int, ifnames: Iterable[str], image: str
) -> str:
    """The plan for `opts` on `ifnames`: key=value lines, one fact each (the C side's parser)."""
    spec = opts.load_spec()
    lines = [
        "# written by sennet-agent after it attached; rc.boot loads this at the next boot",
        f"format={FORMAT}",
        f"image_digest={image}",
        f"object={opts.object_path}",
        f"pin_dir={opts.pin_dir}",
        *(f"pin={name}" for name in spec.pinned),
        *(f"max_entries={name}:{size}" for name, size in spec.max_entries.items()),
        *(f"tunable={name}:{value}" for name, value in spec.tunables.items()),
        *(f"skip_program={name}" for name in spec.skipped),
        f"ingress={layout.PROGRAM_INGRESS}",
        f"egress={layout.PROGRAM_EGRESS}",
        f"slot_map={layout.MAP_IFSLOTS}",
        f"tc_priority={tc_priority}",
        f"tc_handle={tc_handle}",
        *(f"interface={name}" for name in ifnames),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EarlyAttached:
    ifname: str
    ifindex: int
    slot: int
    created_clsact: bool


@dataclass(frozen=True)
class Applied:
    """What the boot-time loader did: the plan it followed and where it attached."""

    plan: str
    attached: tuple[EarlyAttached, ...]

    def setting(self, key: str) -> str:
        prefix = f"{key}="
        return next((x[len(prefix) :] for x in self.plan.splitlines() if x.startswith(prefix)), "")


def read_applied(path: Path) -> Applied | None:
    """The loader's record of this boot, None when it did not attach (or is not ours)."""
    try:
        raw = read_root_file(path)
    except Untrusted as err:
        refuse(err)
        return None
    if raw is None:
        return None
    plan: list[str] = []
    attached: list[EarlyAttached] = []
    for line in raw.decode("utf-8", "replace").splitlines(keepends=True):
        if not line.startswith(RESULT):
            plan.append(line)
            continue
        try:
            name, ifindex, slot, created = line[len(RESULT) :].strip().split(":")
            attached.append(EarlyAttached(name, int(ifindex), int(slot), created == "1"))
        except ValueError:
            event(log, "early_attach_unreadable", logging.WARNING, path=str(path), line=line[:80])
            return None
    return Applied("".join(plan), tuple(attached))


def adopt(opts: DatapathOptions) -> LoadedDatapath:
    """The boot-time load's programs and maps, opened from their pins; `early/` emptied.

    The programs stay attached and the maps alive throughout: the filters and the
    pinned maps hold them, and from here on so do our fds."""
    lb = libbpf()
    early = opts.pin_dir / layout.EARLY_DIR
    fds: dict[str, int] = {}
    spec = opts.load_spec()
    wanted = [(opts.pin_dir / name, name) for name in spec.pinned]
    wanted += [(early / name, name) for name in layout.FLOW_MAPS]
    wanted += [(early / p, p) for p in (layout.PROGRAM_INGRESS, layout.PROGRAM_EGRESS)]
    try:
        for path, name in wanted:
            fds[name] = lb.obj_get(str(path))
    except FileNotFoundError as exc:
        for fd in fds.values():
            os.close(fd)
        raise UserError(
            f"the boot-time load is incomplete: {exc.filename} is not pinned",
            hint="the agent loads its own programs instead",
        ) from exc
    unpin_early(opts.pin_dir)
    ingress = fds.pop(layout.PROGRAM_INGRESS)
    egress = fds.pop(layout.PROGRAM_EGRESS)
    held = [ingress, egress, *fds.values()]

    def close() -> None:
        for fd in held:
            os.close(fd)

    return LoadedDatapath(
        loader="libbpf",
        ingress_fd=ingress,
        egress_fd=egress,
        map_fds=fds,
        ringbuf_bytes=opts.ringbuf_bytes,
        close=close,
    )


def save_plan(path: Path, text: str) -> None:
    """Write the plan only when it changed; remove it when there is none ("")."""
    try:
        current = read_root_file(path)
    except Untrusted as err:
        refuse(err)
        current = None
    if not text:
        path.unlink(missing_ok=True)
    elif current != text.encode():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode(), 0o600)
        event(log, "early_plan_saved", path=str(path))


@dataclass
class Handover:
    """One agent start taking over (or retiring) this boot's boot-time load."""

    applied_file: Path
    opts: DatapathOptions
    stale: Applied | None = None  # a load not adopted: its filters go once ours are in
    created_clsact: set[int] = field(default_factory=set)

    def adopt(self, plan: str) -> LoadedDatapath | None:
        """The boot-time load, if it followed exactly `plan`; None: load our own."""
        applied = read_applied(self.applied_file)
        if applied is None:
            return None
        self.applied_file.unlink(missing_ok=True)  # one adoption per boot-time load
        if not plan or applied.plan != plan:
            self._discard(applied, "plan_changed")
            return None
        try:
            loaded = adopt(self.opts)
        except UserError as exc:
            self._discard(applied, exc.message)
            return None
        self.created_clsact = {a.ifindex for a in applied.attached if a.created_clsact}
        event(
            log,
            "bpf_adopted",
            loader="early",
            pin_dir=str(self.opts.pin_dir),
            interfaces=",".join(a.ifname for a in applied.attached),
            uptime=marks.uptime(),
        )
        return loaded

    def _discard(self, applied: Applied, reason: str) -> None:
        """The pinned counts carry over into our own load when the maps' shapes match."""
        self.stale = applied
        kept = True
        try:
            check_pinned_maps(self.opts.pin_dir, self.opts.ringbuf_bytes, self.opts.map_sizes())
        except UserError:
            remove_pins(self.opts.pin_dir)
            kept = False
        event(
            log,
            "early_attach_discarded",
            logging.WARNING,
            reason=reason,
            counts_kept=kept,
            note="the agent loads its own programs",
        )

    def retire(self, attacher: tc.TcAttacher, ours: list[int]) -> None:
        """Remove the stale load's filters where ours did not replace them in place
        (another priority or handle, an interface no longer monitored)."""
        stale = self.stale
        if stale is None:
            return
        prio, handle = int(stale.setting("tc_priority") or 0), int(stale.setting("tc_handle") or 0)
        same_place = (prio, handle) == (attacher.priority, tc.HANDLE)
        for e in stale.attached:
            if e.ifindex in ours and same_place:
                continue
            try:
                for parent in (tc.PARENT_INGRESS, tc.PARENT_EGRESS):
                    attacher.detach(e.ifindex, parent, prio, handle)
                if e.created_clsact and e.ifindex not in ours:
                    attacher.remove_clsact_if_empty(e.ifindex)
            except (UserError, OSError) as exc:
                event(log, "early_retire_failed", logging.WARNING, ifindex=e.ifindex, error=exc)
        event(log, "early_attach_retired", unpinned=len(unpin_early(self.opts.pin_dir)))
