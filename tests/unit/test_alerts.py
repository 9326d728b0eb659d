"""The shipped alerts under `promtool test rules` (Debian's prometheus 2.42, `make prometheus`).

The rules are the groups of manifests/components/monitoring/prometheusrule.yaml themselves,
written to a rule file as the prometheus-operator does; no copy of them lives here. Each case
is the series two operator replicas export (a leader and a standby, `instance` apart), and
says when each alert fires and when it must not: over replicas, after a deleted policy's series
end, before its `for:` has passed. The expected annotations are the shipped templates filled in
with the alert's labels and value, so a template that does not render fails too.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.prometheus import (
    PrometheusNotFoundError,
    prometheus_binary,
    shipped_rule_groups,
    write_rule_file,
)

LEADER = 'instance="op-a"'
STANDBY = 'instance="op-b"'
ALERT_NAMES = {
    "NodeSysctlNodesDrifted",
    "NodeSysctlNodesFailed",
    "NodeSysctlRolloutHalted",
    "NodeSysctlChecksFailing",
    "NodeSysctlReconcileErrors",
    "NodeSysctlRestartsSkippedRepeatedly",
    "NodeSysctlNodeWatchStale",
    "NodeSysctlNoLeader",
    "NodeSysctlMultipleLeaders",
}


def promtool() -> Path:
    try:
        return prometheus_binary("promtool")
    except PrometheusNotFoundError as exc:
        if os.environ.get("NODESYSCTL_REQUIRE_CONTROLPLANE") == "1":  # make test, CI
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def rules_by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for g in shipped_rule_groups() for rule in g["rules"]}


def filled_annotations(alert: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """The shipped annotation templates of `alert`, filled in as Prometheus fills them."""

    def fill(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return text.replace("{{ $value }}", value)

    return {key: fill(text) for key, text in rules_by_name()[alert]["annotations"].items()}


def fires(alert: str, value: str = "1", **labels: str) -> dict[str, Any]:
    """One expected alert: its labels (the severity from the shipped rule) and annotations."""
    severity = rules_by_name()[alert]["labels"]["severity"]
    full = {**labels, "severity": severity}
    return {"exp_labels": full, "exp_annotations": filled_annotations(alert, full, value)}


def check(alert: str, at: str, *expected: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": list(expected)}


def series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


def leaders(leader: str = "1", standby: str = "0") -> list[dict[str, str]]:
    return [
        series("nodesysctl_leader", f'{LEADER},identity="a"', f"{leader}+0x100"),
        series("nodesysctl_leader", f'{STANDBY},identity="b"', f"{standby}+0x100"),
    ]


CASES: dict[str, dict[str, Any]] = {
    # Drifted from minute 2 on (q from 0): neither at 20m (for: 30m), both at 33m. Policy q's
    # series end at 40m (the policy was deleted, the operator removed them): resolved at 45m.
    "drifted nodes, a deleted policy resolves": {
        "input_series": [
            *leaders(),
            series("nodesysctl_nodes", f'{LEADER},policy="p",state="drifted"', "0 0 2+0x98"),
            series("nodesysctl_nodes", f'{LEADER},policy="q",state="drifted"', "1x40 stale"),
            series("nodesysctl_nodes", f'{LEADER},policy="r",state="drifted"', "0+0x100"),
        ],
        "alert_rule_test": [
            check("NodeSysctlNodesDrifted", "20m"),
            check(
                "NodeSysctlNodesDrifted",
                "33m",
                fires("NodeSysctlNodesDrifted", "2", policy="p"),
                fires("NodeSysctlNodesDrifted", policy="q"),
            ),
            check(
                "NodeSysctlNodesDrifted", "45m", fires("NodeSysctlNodesDrifted", "2", policy="p")
            ),
        ],
    },
    # max by (policy): during a hand-over both processes may export the policy for a scrape.
    "failed nodes, over two replicas": {
        "input_series": [
            *leaders(),
            series("nodesysctl_nodes", f'{LEADER},policy="p",state="failed"', "1+0x30"),
            series("nodesysctl_nodes", f'{STANDBY},policy="p",state="failed"', "0x10 3+0x20"),
        ],
        "alert_rule_test": [
            check("NodeSysctlNodesFailed", "14m"),
            check("NodeSysctlNodesFailed", "16m", fires("NodeSysctlNodesFailed", "3", policy="p")),
        ],
    },
    "halted rollout": {
        "input_series": [
            *leaders(),
            series("nodesysctl_rollout_halted", f'{LEADER},policy="p"', "0 0 1+0x20 0+0x10"),
            series("nodesysctl_rollout_halted", f'{LEADER},policy="ok"', "0+0x32"),
        ],
        "alert_rule_test": [
            check("NodeSysctlRolloutHalted", "6m"),
            check("NodeSysctlRolloutHalted", "8m", fires("NodeSysctlRolloutHalted", policy="p")),
            check("NodeSysctlRolloutHalted", "25m"),
        ],
    },
    # Counters add up over processes: two failures before a failover, two after, on the
    # other process. Pre-seeded at zero, so the first failure is an increase.
    "failing checks, counted by two processes": {
        "input_series": [
            *leaders(),
            series(
                "nodesysctl_checks_total", f'{LEADER},policy="p",result="failed"', "0 1 2 stale"
            ),
            series(
                "nodesysctl_checks_total", f'{STANDBY},policy="p",result="failed"', "_ _ _ 0 1 2x40"
            ),
            series("nodesysctl_checks_total", f'{LEADER},policy="p",result="compliant"', "0+10x40"),
            series("nodesysctl_checks_total", f'{LEADER},policy="one",result="failed"', "0 1x40"),
        ],
        "alert_rule_test": [
            check("NodeSysctlChecksFailing", "4m"),
            check("NodeSysctlChecksFailing", "12m", fires("NodeSysctlChecksFailing", policy="p")),
            check("NodeSysctlChecksFailing", "40m"),  # none in the last 30 minutes
        ],
    },
    "reconcile errors": {
        "input_series": [
            *leaders(),
            series("nodesysctl_reconcile_errors_total", f'{LEADER},policy="p"', "0+1x40"),
            series("nodesysctl_reconcile_errors_total", f'{LEADER},policy="once"', "0 1+0x40"),
        ],
        "alert_rule_test": [
            check("NodeSysctlReconcileErrors", "8m"),
            check(
                "NodeSysctlReconcileErrors", "16m", fires("NodeSysctlReconcileErrors", policy="p")
            ),
        ],
    },
    # Paused Deployments, again and again; workloads not selected are the policy's choice.
    "restarts skipped": {
        "input_series": [
            *leaders(),
            series(
                "nodesysctl_restarts_skipped_total",
                f'{LEADER},policy="p",reason="paused"',
                "0 1 2 3 4+0x40",
            ),
            series(
                "nodesysctl_restarts_skipped_total",
                f'{LEADER},policy="q",reason="not_selected"',
                "0+5x40",
            ),
        ],
        "alert_rule_test": [
            check("NodeSysctlRestartsSkippedRepeatedly", "10m"),
            check(
                "NodeSysctlRestartsSkippedRepeatedly",
                "20m",
                fires("NodeSysctlRestartsSkippedRepeatedly", policy="p"),
            ),
        ],
    },
    # The leader's watch hears every minute until 10m (its timestamp follows the clock), then
    # nothing; the standby never watches (0): max() looks at the leader.
    "node watch stale": {
        "input_series": [
            *leaders(),
            series("nodesysctl_node_watch_last_event_timestamp_seconds", LEADER, "0+60x10 600x40"),
            series("nodesysctl_node_watch_last_event_timestamp_seconds", STANDBY, "0x50"),
        ],
        "alert_rule_test": [
            check("NodeSysctlNodeWatchStale", "15m"),
            check("NodeSysctlNodeWatchStale", "24m"),
            check("NodeSysctlNodeWatchStale", "27m", fires("NodeSysctlNodeWatchStale")),
        ],
    },
    "a leader, then none, then nothing scraped": {
        "input_series": [
            series("nodesysctl_leader", f'{LEADER},identity="a"', "1x10 0x10 stale"),
            series("nodesysctl_leader", f'{STANDBY},identity="b"', "0x20 stale"),
        ],
        "alert_rule_test": [
            check("NodeSysctlNoLeader", "9m"),
            check("NodeSysctlNoLeader", "14m"),
            check("NodeSysctlNoLeader", "17m", fires("NodeSysctlNoLeader")),
            check("NodeSysctlNoLeader", "30m", fires("NodeSysctlNoLeader")),  # absent()
        ],
    },
    "two leaders": {
        "input_series": leaders("1", "1"),
        "alert_rule_test": [
            check("NodeSysctlMultipleLeaders", "4m"),
            check("NodeSysctlMultipleLeaders", "6m", fires("NodeSysctlMultipleLeaders", "2")),
            check("NodeSysctlNoLeader", "6m"),
        ],
    },
}


def test_every_shipped_alert_is_tested() -> None:
    assert set(rules_by_name()) == ALERT_NAMES
    tested = {t["alertname"] for case in CASES.values() for t in case["alert_rule_test"]}
    tested_firing = {
        t["alertname"]
        for case in CASES.values()
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert tested == tested_firing == ALERT_NAMES


@pytest.mark.parametrize("name", sorted(CASES))
def test_alerts_under_promtool(name: str, tmp_path: Path) -> None:
    tool = promtool()
    write_rule_file(tmp_path / "rules.yaml", shipped_rule_groups())
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [{"name": name, "interval": "1m", **CASES[name]}],
            },
            sort_keys=False,
        )
    )
    out = subprocess.run(
        [str(tool), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_checks_the_shipped_rules(tmp_path: Path) -> None:
    rules = write_rule_file(tmp_path / "rules.yaml", shipped_rule_groups())
    out = subprocess.run(
        [str(promtool()), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_expectation_fails(tmp_path: Path) -> None:
    """The harness itself: promtool does fail a case whose alert does not fire."""
    tool = promtool()
    write_rule_file(tmp_path / "rules.yaml", shipped_rule_groups())
    case = {"input_series": leaders(), "alert_rule_test": [
        check("NodeSysctlNoLeader", "10m", fires("NodeSysctlNoLeader"))
    ]}  # fmt: skip
    test_file = tmp_path / "test.yaml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": [{"interval": "1m", **case}]})
    )
    out = subprocess.run(
        [str(tool), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "NodeSysctlNoLeader" in out.stdout + out.stderr
