"""The bytes-level /metrics path (`fleet_text.py`) against the path before it, byte for byte.

Both are real renderers over real committed views (`AgentView.apply` on real
heartbeat messages); the old path is the one `SENNET_CONTROLPLANE_OLD_PATH=1`
selects for the benchmark. The content must be identical, not only the
samples: same families, same order, same number formatting.
"""

from __future__ import annotations

import uuid

import pytest

from sennet.controlplane import old_path
from sennet.controlplane.fleet import AgentView, Fleet
from sennet.controlplane.fleet_exposition import ExportCache, FastFleetRenderer
from sennet.controlplane.fleet_text import FleetText, _Text
from sennet.controlplane.insight_render import InsightRenderer
from sennet.controlplane.metrics import Exposition, ServerMetrics
from sennet.testing.controlplane import heartbeat_request
from sennet.testing.scrape import parse_samples
from sennet.testing.telemetry import full_request


def _old(views: list[AgentView], now: float, stale_after_s: float, step: int = 1) -> bytes:
    fast = FastFleetRenderer(stale_after_s, ExportCache()).render(views, now)
    return (fast + InsightRenderer(step).render(views)).encode()


def _fleet() -> list[AgentView]:
    views = []
    for n in range(12):
        aid = str(uuid.UUID(int=n + 1))
        if n % 3 == 0:  # interfaces and events only
            req = heartbeat_request(aid, rx=(n * 5, n * 300), ifname=f"eth{n % 2}")
        else:
            req = full_request(aid, 1 + n % 3)
        view, _ = AgentView(aid, hostname=f'h"{n}\\\n%d').apply(req, 1_700_000_000.0 + n)
        views.append(view)
    views.append(AgentView(str(uuid.UUID(int=999))))  # enrolled, never reported
    return views


@pytest.mark.parametrize("step", [1, 3])
def test_the_prepared_bytes_equal_the_old_text_after_heartbeats_and_staleness(step: int) -> None:
    views = _fleet()
    text = FleetText(stale_after_s=5.0, histogram_step=step)
    now = 1_700_000_006.5  # agents 0..1 are stale (more than 5 s old), the rest up
    first = b"".join(text.render(views, now))
    assert first == _old(views, now, 5.0, step)
    assert b'sennet_agent_up{agent="00000000-0000-0000-0000-000000000001"} 0\n' in first
    assert b'sennet_agent_up{agent="00000000-0000-0000-0000-000000000003"} 1\n' in first
    # unchanged views: the joined blocks are reused, only `up` follows the clock
    later = 1_700_000_100.0
    assert b"".join(text.render(views, later)) == _old(views, later, 5.0, step)
    # new heartbeats (moving totals, a new interface, new DNS type), installed as the
    # writer installs them: prepared at install, then joined by the scrape
    fresh = []
    for v in views[:6]:
        req = full_request(v.agent_id, 7)
        req.dns.queries_by_type["MX"] = 3
        fresh.append(v.apply(req, 1_700_000_050.0)[0])
    text.warm(fresh)
    views = fresh + views[6:]
    assert b"".join(text.render(views, later)) == _old(views, later, 5.0, step)
    # an agent leaves the snapshot (the view list is all the fleet has)
    assert b"".join(text.render(views[1:], later)) == _old(views[1:], later, 5.0, step)


def test_exposition_new_and_old_paths_serve_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = Fleet(_fleet())
    server = ServerMetrics(agents=lambda: len(fleet))  # one: its `_created` stamps differ
    new = Exposition(server, fleet, stale_after_s=1e12)
    monkeypatch.setenv(old_path.ENV, "1")
    old = Exposition(server, fleet, stale_after_s=1e12)
    body = new.render()
    assert body == old.render()
    assert parse_samples(body.decode()) == parse_samples(new.render(fast=False).decode())
    # a heartbeat committed after that scrape shows up in the next one
    view = fleet.snapshot()[1]
    after, _ = view.apply(full_request(view.agent_id, 9), 1_800_000_000.0)
    fleet.publish({after.agent_id: after})
    body = new.render()
    assert body == old.render()
    assert b'sennet_flow_created_total{agent="%s"} 9000\n' % after.agent_id.encode() in body


class _Counting(FleetText):
    """Records each agent whose text is prepared (a spy on the real renderer, not a stand-in)."""

    def __init__(self, stale_after_s: float) -> None:
        super().__init__(stale_after_s)
        self.prepared: list[str] = []

    def _prepare(self, v: AgentView, previous: _Text | None) -> _Text:
        self.prepared.append(v.agent_id)
        return super()._prepare(v, previous)


def test_heartbeats_between_two_scrapes_are_prepared_once_each_side_and_render_the_newest() -> None:
    views = _fleet()
    text = _Counting(stale_after_s=1e12)
    now = 1_700_000_100.0
    assert b"".join(text.render(views, now)) == _old(views, now, 1e12)
    agent = views[1]
    text.prepared.clear()
    latest = agent
    for n in range(1, 6):  # five heartbeats of one agent, installed as the writer installs them
        latest = latest.apply(full_request(agent.agent_id, 10 + n), 1_700_000_050.0 + n)[0]
        text.warm([latest])
    assert text.prepared == [agent.agent_id]  # the first after the scrape; the rest wait
    views[1] = latest
    body = b"".join(text.render(views, now))
    assert body == _old(views, now, 1e12)  # the newest view's totals, byte for byte
    assert b'sennet_flow_created_total{agent="%s"} 15000\n' % agent.agent_id.encode() in body
    assert text.prepared == [agent.agent_id] * 2  # and the scrape prepared it once
    # after that scrape, the writer prepares the next heartbeat again
    latest = latest.apply(full_request(agent.agent_id, 16), 1_700_000_060.0)[0]
    text.warm([latest])
    assert text.prepared == [agent.agent_id] * 3
    views[1] = latest
    assert b"".join(text.render(views, now)) == _old(views, now, 1e12)
    assert text.prepared == [agent.agent_id] * 3
