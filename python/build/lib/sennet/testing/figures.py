"""Benchmark figures and their two renderings: a table for people, JSON lines for machines.

Every benchmark (bench/*.py) reports through this one type, so every figure
has the same JSON shape: `name`, `value`, `unit`, optional `note`, and for a
ratio or an overhead the baseline it was measured against in the same run on
the same machine (`baseline`, `baseline_value`, `baseline_unit`), never a
number remembered from elsewhere.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""
    baseline: Figure | None = None

    def as_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.baseline is not None:
            doc["baseline"] = self.baseline.name
            doc["baseline_value"] = self.baseline.value
            doc["baseline_unit"] = self.baseline.unit
        if self.note:
            doc["note"] = self.note
        return doc

    def as_json(self) -> str:
        return json.dumps(self.as_dict())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(figures: Iterable[Figure]) -> str:
    rows = [
        (f.name, _fmt(f.value), f.unit, f"vs {f.baseline.name}" if f.baseline else "", f.note)
        for f in figures
    ]
    heads = ("figure", "value", "unit", "baseline", "note")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = []
    for row in (heads, *rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1])]
        cells += [c.ljust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(figures: Sequence[Figure], as_json: bool) -> str:
    """What a benchmark prints on stdout: one JSON object per line, or the table."""
    if as_json:
        return "\n".join(f.as_json() for f in figures)
    return table(figures)
