"""The switch that selects the heartbeat and /metrics paths as they were before issue 16.

Only `bench/controlplane.py` sets it, to print the figures before and after
side by side in one run; it is not a setting an operator needs. Read when
the objects are made, so one process can hold both paths.
"""

from __future__ import annotations

import os

ENV = "SENNET_CONTROLPLANE_OLD_PATH"


def selected() -> bool:
    """True when `SENNET_CONTROLPLANE_OLD_PATH=1` is in the environment."""
    return os.environ.get(ENV) == "1"
