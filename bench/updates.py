"""Fleet side of updates: fetching an offered bundle, and its families on /metrics.

- `updates.fetch.rate`: the agent's fetcher (1 MiB Range pieces, each appended and
  fsynced, the sha256 over the whole file at the end) downloading a bundle from a real
  control plane over loopback, against one plain GET of the same file from the same
  server in the same run (`updates.fetch.plain_get`, read into memory, no disk). The
  fetched file must equal the published one, or the run fails.
- `updates.metrics.render_ms` at N appliances: the fast text of
  `sennet_agent_image_info`, `sennet_agent_update_last_outcome` and its timestamp,
  per-agent lines cached (best of 5), against the prometheus-client reference path for
  the same samples (`updates.metrics.reference_ms`); the cold first render is reported
  too. Both must give the same samples, or the run fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from sennet.agent.update_fetch import FetchOptions, UpdateFetcher
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.image_exposition import ImageCollector, ImageRenderer
from sennet.controlplane.image_report import ImageReport
from sennet.proto.sentinel.v1 import sentinel_pb2 as pb
from sennet.testing.bundles import make_bundle
from sennet.testing.controlplane import cli, create_bootstrap_token, running
from sennet.testing.errors import HarnessError
from sennet.testing.figures import Figure, report
from sennet.testing.scrape import parse_samples


def fetch_figures(work: Path, size_mib: int) -> list[Figure]:
    db = work / "cp.db"
    bootstrap = create_bootstrap_token(db)
    bundle = work / "b.bundle"
    sha = make_bundle(bundle, "0.2.0", payload_bytes=size_mib << 20)
    published = cli(db, "update", "publish", str(bundle))
    if published.returncode != 0:
        raise HarnessError(f"update publish failed: {published.stderr}")
    size = bundle.stat().st_size
    with running(db, work) as cp:
        _agent, token = cp.register(bootstrap)
        path = f"/updates/{sha}.bundle"
        req = urllib.request.Request(cp.http + path, headers={"Authorization": f"Bearer {token}"})
        started = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            plain = resp.read()
        plain_s = time.perf_counter() - started
        if len(plain) != size:
            raise HarnessError(f"plain GET returned {len(plain)} bytes of {size}")
        offer = pb.UpdateOffer(
            version="0.2.0",
            sha256=sha,
            size=size,
            download_path=path,
            download_port=cp.http_port,
            apply_at="now",
        )
        fetcher = UpdateFetcher(work / "agent", FetchOptions(max_bytes=1 << 40))
        started = time.perf_counter()
        fetched = fetcher.fetch(offer, cp.http, token)
        fetch_s = time.perf_counter() - started
        cp.stop()
    if fetched.read_bytes() != bundle.read_bytes():
        raise HarnessError("the fetched bundle differs from the published one")
    mb = size / 1e6
    baseline = Figure("updates.fetch.plain_get", mb / plain_s, "MB/s", f"{mb:.1f} MB, one GET")
    return [
        baseline,
        Figure(
            "updates.fetch.rate",
            mb / fetch_s,
            "MB/s",
            f"{mb:.1f} MB in {fetch_s:.2f} s, 1 MiB pieces, fsync each, sha256",
            baseline,
        ),
    ]


def render_figures(agents: int) -> list[Figure]:
    views = [
        AgentView(
            str(uuid.UUID(int=n + 1)),
            image=ImageReport(
                "0.2.0", f"{n:064x}", "ab"[n % 2], "committed", "", "0.1.0", "0.2.0", 1.8e9 + n
            ),
        )
        for n in range(agents)
    ]
    renderer = ImageRenderer()
    started = time.perf_counter()
    text = renderer.render(views)
    cold = time.perf_counter() - started
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        renderer.render(views)
        warm.append(time.perf_counter() - started)
    registry = CollectorRegistry()
    registry.register(ImageCollector(Fleet(views)))
    reference = []
    for _ in range(3):
        started = time.perf_counter()
        ref_text = generate_latest(registry).decode()
        reference.append(time.perf_counter() - started)
    if parse_samples(text) != parse_samples(ref_text):
        raise HarnessError("the fast text and the reference path differ")
    baseline = Figure("updates.metrics.reference_ms", min(reference) * 1e3, "ms", "best of 3")
    note = f"{agents} appliances, {text.count(chr(10)) - 6} samples, {len(text) / 1e6:.1f} MB"
    return [
        baseline,
        Figure("updates.metrics.render_ms", min(warm) * 1e3, "ms", note + ", best of 5", baseline),
        Figure("updates.metrics.cold_render_ms", cold * 1e3, "ms", "first render, no cache"),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per figure")
    p.add_argument("--bundle-mib", type=int, default=64, help="bundle payload size (MiB)")
    p.add_argument("--agents", type=int, default=10_000, help="appliances on /metrics")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sennet-bench-updates-") as tmp:
        figures = fetch_figures(Path(tmp), args.bundle_mib) + render_figures(args.agents)
    print(report(figures, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
