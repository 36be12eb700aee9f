"""The shipped alert rules fire on the series they are about, checked by Prometheus' own engine.

`promtool test rules` evaluates `deploy/prometheus/sennet-rules.yml` over input
series written here (what the control plane's /metrics would hold) and compares
the alerts firing at an instant with the ones expected; any difference fails it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "deploy/prometheus/sennet-rules.yml"


def _rule(name: str) -> dict[str, object]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == name]
    assert isinstance(rule, dict)
    return rule


def _promtool_test(tmp_path: Path, tests: list[dict[str, object]]) -> None:
    spec = tmp_path / "rules_test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests})
    )
    argv = ["promtool", "test", "rules", str(spec)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_flow_table_alert_fires_for_lost_and_for_evicted_flows_and_not_otherwise(
    tmp_path: Path,
) -> None:
    """Agent a only evicts, b only loses, c does neither: a and b alert, c does not."""
    name = "SennetFlowTableTooSmall"
    rule = _rule(name)
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    growing, flat = "0+3x15", "5x15"  # one sample a minute for 15 minutes
    series = {"a": (flat, growing), "b": (growing, flat), "c": (flat, flat)}
    inputs = [
        {"series": f'sennet_flow_{family}_total{{agent="{agent}"}}', "values": values}
        for agent, (lost, evicted) in series.items()
        for family, values in (("lost", lost), ("evicted", evicted))
    ]

    def alert(agent: str) -> dict[str, object]:
        return {
            "exp_labels": {"agent": agent, **labels},
            "exp_annotations": {
                k: str(v).replace("{{ $labels.agent }}", agent) for k, v in annotations.items()
            },
        }

    _promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {"eval_time": "12m", "alertname": name, "exp_alerts": [alert("a"), alert("b")]}
                ],
            }
        ],
    )


def test_the_update_alert_fires_for_a_recent_rollback_or_failure_only(tmp_path: Path) -> None:
    """a rolled back 10 minutes ago, b failed, c committed, d rolled back two days ago."""
    name = "SennetUpdateNotCommitted"
    rule = _rule(name)
    labels = rule["labels"]
    assert isinstance(labels, dict)
    outcomes = {
        "a": ("rolled_back", "health_check_failed", "600"),
        "b": ("failed", "write_error", "0"),
        "c": ("committed", "", "0"),
        "d": ("rolled_back", "health_check_failed", "-172800"),
    }
    inputs = []
    for agent, (result, reason, at) in outcomes.items():
        outcome = (
            f'sennet_agent_update_last_outcome{{agent="{agent}",result="{result}",'
            f'reason="{reason}",from_version="0.1.0",to_version="0.2.0"}}'
        )
        inputs.append({"series": outcome, "values": "1x30"})
        inputs.append(
            {
                "series": f'sennet_agent_update_last_outcome_timestamp_seconds{{agent="{agent}"}}',
                "values": f"{at}x30",
            }
        )

    def alert(agent: str) -> dict[str, object]:
        result, reason, _ = outcomes[agent]
        return {
            "exp_labels": {
                "agent": agent,
                "result": result,
                "reason": reason,
                "from_version": "0.1.0",
                "to_version": "0.2.0",
                **labels,
            },
            "exp_annotations": {
                "summary": f"The update of appliance {agent} to 0.2.0 ended {result} ({reason})"
                " in the last day"
            },
        }

    _promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": name, "exp_alerts": [alert("a"), alert("b")]}
                ],
            }
        ],
    )
