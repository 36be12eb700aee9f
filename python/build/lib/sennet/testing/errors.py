"""Two failures a person running the tests must tell apart.

`TestFailed`: Sennet did not do what the test expects (a product bug).
`HarnessError`: the machinery around it broke (QEMU missing, image not built,
a namespace that cannot be created) and says nothing about the product.
"""

from __future__ import annotations


class TestFailed(AssertionError):
    """The product misbehaved; pytest reports it as a failed assertion."""

    __test__ = False  # not a pytest test class


class HarnessError(RuntimeError):
    """The test machinery itself failed; pytest reports it as an error."""
