"""Scrape a Prometheus endpoint and index its samples, parsed by the reference library.

Tests, benchmarks and the main job all read /metrics of the control plane or
the agent. They parse with prometheus-client's own text parser (never a split
on spaces), so what they check is what Prometheus would ingest, and a
duplicate sample is an error rather than a silently overwritten value.
"""

from __future__ import annotations

import ssl
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from sennet.testing.errors import TestFailed

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def fetch(url: str, timeout: float = 10.0, context: ssl.SSLContext | None = None) -> str:
    """The body of GET `url` (a /metrics page) as text; OSError when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        body: bytes = resp.read()
    return body.decode()


def parse_samples(text: str) -> Samples:
    """Every sample, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in out:
                raise TestFailed(f"duplicate sample {key} in the exposition")
            out[key] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the series is absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def matching(samples: Samples, name: str, **labels: str) -> dict[Labels, float]:
    """All series of `name` whose labels include `labels`, keyed by their full label set."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= set(lab)}


def scrape(url: str, timeout: float = 10.0) -> Samples:
    """GET and parse in one step."""
    return parse_samples(fetch(url, timeout))
