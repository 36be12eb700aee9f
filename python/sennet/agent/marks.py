"""Boot marks: the guest's clock and the agent's footprint, for the console.

The boot benchmark (bench/boot.py) splits power-on to counting into phases from
the console. The host sees a line when it arrives, which says little about when
the guest wrote it under a slow emulator; `uptime=` (seconds since the kernel
started, /proc/uptime) on the lines that end a phase gives the guest's own clock,
the same clock initramfs and rc.boot print. Standard library only: this is read
on the path to attached.
"""

from __future__ import annotations

import os


def uptime() -> str:
    """Seconds since boot as /proc/uptime prints them ("12.34"), or "" off Linux."""
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return f.read().split()[0]
    except OSError:
        return ""


def process_started() -> str:
    """When this process was started, in seconds since boot (clock ticks, 10 ms here)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return f"{int(fields[19]) / os.sysconf('SC_CLK_TCK'):.2f}"  # field 22, starttime


def rss_kib() -> int:
    """This process's resident set (VmRSS, KiB), as bench/ measures every RSS; 0 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
