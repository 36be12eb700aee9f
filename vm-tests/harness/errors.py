"""Two failures users must tell apart: the appliance misbehaved, or the harness broke."""

from __future__ import annotations


class TestFailed(AssertionError):
    """The appliance did not do what the test expects (a product bug)."""

    __test__ = False  # not a pytest test class


class HarnessError(RuntimeError):
    """The test machinery itself failed (QEMU missing, image not built, tap not creatable)."""
