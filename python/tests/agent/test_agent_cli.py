"""The `sennet-agent` command end to end: a real process, a real kernel, real traffic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sennet.common.netns import entered
from sennet.testing.agent import READY, agent, run_cli, status
from sennet.testing.netlab import VethPair, sh
from sennet.testing.ports import free_port
from sennet.testing.scrape import Samples, sample, scrape
from tests.frames import cases

pytestmark = pytest.mark.kernel


def scrape_in(netns: str, port: int) -> Samples:
    """The agent's /metrics on the loopback of the namespace it runs in."""
    with entered(netns):
        return scrape(f"http://127.0.0.1:{port}/metrics")


def base_args(net: VethPair, pin_root: Path, tmp_path: Path) -> list[str]:
    return [
        "--interfaces", net.if_a, "--pin-dir", str(pin_root / "sennet"),
        "--state-dir", str(tmp_path / "state"), "--interval-s", "0.5",
        "--large-packet-bytes", "1000",
    ]  # fmt: skip


@pytest.mark.parametrize("loader", ["libbpf", "bcc"])
def test_agent_reports_exact_counts_in_status_and_metrics(
    net: VethPair, pin_root: Path, tmp_path: Path, loader: str
) -> None:
    port = free_port()
    args = [
        *base_args(net, pin_root, tmp_path),
        "--loader",
        loader,
        "--metrics-listen",
        f"127.0.0.1:{port}",
    ]
    all_cases = cases()
    with agent(net.ns_a, args, tmp_path / "agent.log") as a:
        a.wait_for_log("event=agent_ready")
        net.send_to_a([c.frame for c in all_cases])
        rx_bytes = sum(c.rx_len for c in all_cases)
        s = status(net.ns_a, pin_root / "sennet")
        (iface,) = s["interfaces"]
        assert (iface["ifname"], iface["rx_packets"], iface["rx_bytes"]) == (
            net.if_a,
            len(all_cases),
            rx_bytes,
        )
        assert (iface["tx_packets"], iface["tx_bytes"]) == (0, 0)
        assert s["events_by_kind"]["land"] == 4
        assert s["events_by_kind"]["large_packet"] == 2
        assert sum(s["ringbuf_drops_by_kind"].values()) == 0
        m = scrape_in(net.ns_a, port)
        rx = {"direction": "rx", "interface": net.if_a}
        assert sample(m, "sennet_agent_packets_total", **rx) == len(all_cases)
        assert sample(m, "sennet_agent_bytes_total", **rx) == rx_bytes
        assert sample(m, "sennet_agent_events_total", kind="tcp_xmas") == 3
        # truncated TCP, UDP and ICMP, and four L4 headers cut short before padding or a trailer
        assert sample(m, "sennet_agent_events_total", kind="truncated_l4") == 3 + 4
        a.wait_for_log("event=snapshot")
        assert a.stop() == 0
    log = a.log()
    assert re.search(rf"event=attached ifname={net.if_a} ifindex=\d+ slot=1 loader={loader}", log)
    assert "event=agent_stopped detached=True" in log
    assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress").strip() == ""


def test_restarted_agent_continues_counters_without_duplicate_filters(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    args = [*base_args(net, pin_root, tmp_path), "--detach-on-exit", "false"]
    frame = next(c.frame for c in cases() if c.name == "udp_small")
    with agent(net.ns_a, args, tmp_path / "first.log") as a:
        a.wait_for_log("event=agent_ready")
        net.send_to_a([frame] * 3)
        assert a.stop() == 0
    net.send_to_a([frame] * 2)  # filters stayed: counted while no agent ran
    first_id = re.search(r"agent_id=(\S+)", a.log())
    with agent(net.ns_a, args, tmp_path / "second.log") as b:
        b.wait_for_log("event=agent_ready")
        net.send_to_a([frame])
        (iface,) = status(net.ns_a, pin_root / "sennet")["interfaces"]
        assert (iface["rx_packets"], iface["rx_bytes"]) == (6, 360)
        assert b.stop() == 0
    assert first_id and f"agent_id={first_id.group(1)}" in b.log()
    for hook in ("ingress", "egress"):
        out = sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, hook)
        assert out.count("handle 0x1") == 1, out


def test_agent_in_the_host_namespace_attaches_inside_a_named_netns(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    """--netns: pins stay in the host's bpffs view; only the netlink socket enters the netns."""
    args = [*base_args(net, pin_root, tmp_path), "--netns", net.ns_a]
    frame = next(c.frame for c in cases() if c.name == "icmp_echo")
    with agent("", args, tmp_path / "agent.log") as a:
        a.wait_for_log(READY)
        net.send_to_a([frame] * 4)
        (iface,) = status("", pin_root / "sennet", names_from=net.ns_a)["interfaces"]
        assert (iface["ifname"], iface["rx_packets"], iface["rx_bytes"]) == (net.if_a, 4, 4 * 98)
        assert a.stop() == 0, a.log()
    assert sh("tc", "-n", net.ns_a, "filter", "show", "dev", net.if_a, "ingress").strip() == ""


def test_a_name_that_cannot_be_an_interface_fails_at_start_and_touches_nothing(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    """A missing interface is waited for (test_reattach); one that can never exist is an error."""
    args = [
        "run",
        "--interfaces",
        f"{net.if_a},eth0:1",
        "--pin-dir",
        str(pin_root / "s"),
        "--state-dir",
        str(tmp_path),
    ]
    result = run_cli(net.ns_a, args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sennet-agent: error: interfaces (from flags): expected interface names (1-15 bytes, "
        """no "/", ":" or spaces), not 'eth0:1', got ['mon0', 'eth0:1']"""
    )
    assert "clsact" not in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)


def test_bad_config_file_exits_2_naming_file_and_key(net: VethPair, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('interfaces = ["mon0"]\nringbuf_bytes = "lots"\n')
    result = run_cli(net.ns_a, ["run", "--config", str(cfg)])
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"sennet-agent: error: {cfg}: key 'ringbuf_bytes': expected an integer, got 'lots'"
    )


def test_check_loads_the_programs_without_attaching(
    net: VethPair, pin_root: Path, tmp_path: Path
) -> None:
    args = [
        "check",
        "--interfaces",
        net.if_a,
        "--pin-dir",
        str(pin_root / "s"),
        "--state-dir",
        str(tmp_path),
    ]
    result = run_cli(net.ns_a, args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: libbpf loaded sennet_ingress and sennet_egress")
    assert "clsact" not in sh("tc", "-n", net.ns_a, "qdisc", "show", "dev", net.if_a)
    assert sorted(p.name for p in (pin_root / "s").iterdir()) == []


def test_help_explains_every_command(net: VethPair) -> None:
    result = run_cli(net.ns_a, ["--help"])
    assert result.returncode == 0
    for command in ("run", "status", "check", "reset", "config"):
        assert command in result.stdout
    config_help = run_cli(net.ns_a, ["config", "--help"]).stdout
    assert "SENNET_LARGE_PACKET_BYTES" in config_help
