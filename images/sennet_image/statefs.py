"""The state partition's file system, made at build time: ext4 with a journal.

The state partition holds what must survive a power cut: the agent's identity,
its spool of unsent heartbeats, the updater's status and trial records. The
appliance's busybox `mke2fs` can only make ext2, which has no journal: a cut in
the middle of a metadata update leaves the file system inconsistent, and the
appliance carries no fsck to repair it. So the build makes the file system with
e2fsprogs (from the pinned build root) and the kernel's ext4 driver replays the
journal at mount after a cut. First boot then formats nothing; a state partition
found without a file system (wiped in the field) is still formatted by `rc.boot`,
as ext2, the best busybox can do.

Reproducible: the UUID and the directory hash seed are derived from the variant,
`E2FSPROGS_FAKE_TIME` fixes every timestamp at SOURCE_DATE_EPOCH, the inode
tables and journal are written out at build time (no lazy init, so no background
zeroing at first boot), and mke2fs's defaults come from the build root's pinned
mke2fs.conf. It is mostly zeros, so it costs ~33 KB of the compressed image.
"""

from __future__ import annotations

from pathlib import Path

from sennet_image.proc import run, source_date_epoch

LABEL = "sennet-state"


def build_state(out: Path, size_mib: int, fs_uuid: str) -> None:
    """An empty ext4 file system of `size_mib` MiB with a journal, in the file `out`."""
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size_mib << 20)
    extended = f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"
    run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", LABEL, "-U", fs_uuid,
         "-E", extended, out],
        env={"E2FSPROGS_FAKE_TIME": str(source_date_epoch())},
    )  # fmt: skip
