"""The updater's record on the state partition: status.json (world-readable) and trial.json.

status.json (shared contract): booted_slot, active_slot, version, image_digest
and last_outcome {result, reason, from_version, to_version, at}; the agent reads
it for its heartbeat. trial.json (root's) remembers which slot and version an
install put on trial and from what, so a rollback recorded on the other slot
after the trial died still names both versions. Both are written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sennet.common.files import write_atomic

RESULTS = ("committed", "rolled_back", "refused", "failed")
MAX_BYTES = 64 * 1024


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Store:
    directory: Path

    @property
    def status_path(self) -> Path:
        return self.directory / "status.json"

    @property
    def trial_path(self) -> Path:
        return self.directory / "trial.json"

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            raw = path.read_bytes()[:MAX_BYTES]
            data = json.loads(raw)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def status(self) -> dict[str, Any]:
        return self._read(self.status_path)

    def trial(self) -> dict[str, Any]:
        return self._read(self.trial_path)

    def _write(self, path: Path, data: dict[str, Any], mode: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode)

    def update_status(self, **fields: Any) -> dict[str, Any]:
        data = self.status()
        data.update(fields)
        self._write(self.status_path, data, 0o644)
        return data

    def outcome(
        self, result: str, reason: str, from_version: str, to_version: str
    ) -> dict[str, Any]:
        """Record the last outcome (one of RESULTS) with its reason and both versions."""
        assert result in RESULTS, result
        last = {
            "result": result,
            "reason": reason,
            "from_version": from_version,
            "to_version": to_version,
            "at": _now(),
        }
        return self.update_status(last_outcome=last)

    def start_trial(self, slot: str, from_slot: str, from_version: str, to_version: str) -> None:
        record = {
            "slot": slot,
            "from_slot": from_slot,
            "from_version": from_version,
            "to_version": to_version,
            "at": _now(),
        }
        self._write(self.trial_path, record, 0o600)

    def end_trial(self) -> None:
        self.trial_path.unlink(missing_ok=True)
