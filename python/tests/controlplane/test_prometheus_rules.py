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
