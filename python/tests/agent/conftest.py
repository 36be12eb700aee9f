"""Fixtures the agent's tests borrow: a real control plane for the control-plane sink.

`shared` (one control plane per module) and `fresh` (one per test) are defined
with the control plane's harness; they are re-exported here, not copied, so the
sink's tests run against exactly the process the control plane's tests use.
"""

from __future__ import annotations

from tests.controlplane.conftest import Served, fresh, shared

__all__ = ["Served", "fresh", "shared"]
