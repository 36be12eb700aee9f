"""A refused bundle: one reason word from a fixed set, and a detail for people.

A refusal is the expected answer to a bad bundle, not a crash: the CLI prints
`sennet-update: refused: reason=R detail=D`, records it as the last outcome and
exits 1, having written nothing to a slot or the ESP.
"""

from __future__ import annotations

REASONS = frozenset(
    {
        "signature",  # no key in the keyring verifies manifest.sig over manifest.json
        "digest",  # a member's sha256 or size differs from the manifest
        "truncated",  # the file ends before its members do
        "malformed",  # not a bundle: members missing, out of order, bad manifest
        "incompatible",  # another appliance or variant, or running version too old
        "downgrade",  # older than update_min_version
        "same_version",  # the version already running
        "too_large",  # an image does not fit its slot partition
        "no_keys",  # the keyring holds no key
        "no_slot",  # the inactive slot's partitions cannot be found
    }
)


class Refused(Exception):
    """The bundle is not installed; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"reason={reason} detail={detail}")
        self.reason = reason
        self.detail = detail

    def line(self) -> str:
        """The one line a refusal prints (detail quoted when it holds spaces)."""
        detail = self.detail if " " not in self.detail else '"' + self.detail + '"'
        return f"sennet-update: refused: reason={self.reason} detail={detail}"


class UpdateFailed(Exception):
    """Writing or checking a slot failed after verification (I/O error, read-back mismatch)."""
