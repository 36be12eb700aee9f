"""Figures and their two renderings: a table for people, JSON lines for machines.

A ratio or an overhead is only meaningful against a baseline measured in the
same run on the same machine, so a Figure carries the name and value of its
baseline instead of a number remembered from elsewhere.
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

    def as_json(self) -> str:
        doc: dict[str, object] = {"name": self.name, "value": self.value, "unit": self.unit}
        if self.baseline is not None:
            doc["baseline"] = self.baseline.name
            doc["baseline_value"] = self.baseline.value
            doc["baseline_unit"] = self.baseline.unit
        if self.note:
            doc["note"] = self.note
        return json.dumps(doc)


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
