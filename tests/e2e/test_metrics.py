"""Metrics and alerts end to end: a real Prometheus (Debian's 2.42, `make prometheus`) scrapes
the operator process (a static scrape config pointed at its --metrics-bind-address) and
evaluates the shipped alert rules; a halted rollout makes NodeSysctlRolloutHalted fire in
Prometheus' own /api/v1/alerts, and the metrics say what the policy status says.

The rules are the shipped PrometheusRule's groups with every `for:` cut to 1 s and a 1 s
evaluation interval (the shipped 5 minutes would make this test wait 5 minutes); the
expressions are the shipped ones, and promtool checks the shipped durations
(tests/unit/test_alerts.py).
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devcluster.prometheus import (
    PrometheusNotFoundError,
    PrometheusServer,
    fast_rule_groups,
    free_port,
    prometheus_binary,
)
from devcluster.waiting import wait_for

from .conftest import OperatorProcess, Policies
from .test_operator import (
    RANGE,
    WIDENED,
    condition,
    enforce_spec,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STATES = ("compliant", "remediated", "drifted", "failed", "pending", "waiting")


@pytest.fixture
def metrics_address() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def prometheus(metrics_address: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    try:
        prometheus_binary("prometheus")
    except PrometheusNotFoundError as exc:
        if os.environ.get("NODESYSCTL_REQUIRE_CONTROLPLANE") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = PrometheusServer(directory, [metrics_address], fast_rule_groups()).start()
    yield server
    server.stop()


def scrape(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The operator's /metrics, as Prometheus parses it."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def policy_series(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], policy: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {key: v for key, v in samples.items() if ("policy", policy) in key[1]}


def nodes_by_state(address: str, policy: str) -> dict[str, float]:
    samples = scrape(address)
    return {
        state: samples[("nodesysctl_nodes", frozenset({("policy", policy), ("state", state)}))]
        for state in STATES
    }


def prometheus_value(prometheus: PrometheusServer, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_a_halted_rollout_fires_its_alert_and_the_metrics_match_the_status(
    start_operator: Callable[..., OperatorProcess],
    metrics_address: str,
    prometheus: PrometheusServer,
    policies: Policies,
    node_factory: Any,
    test_id: str,
) -> None:
    operator = start_operator("--metrics-bind-address", metrics_address)
    wait_for(prometheus.targets_up, timeout=60, what="Prometheus scraping the operator")
    # One process, so it leads: no NoLeader alert, build_info scraped.
    wait_for(
        lambda: prometheus_value(prometheus, "sum(nodesysctl_leader)") == 1,
        timeout=60,
        what="nodesysctl_leader 1 in Prometheus",
    )
    assert prometheus_value(prometheus, 'count(nodesysctl_build_info{version!=""})') == 1

    broken = node_factory(name=f"{test_id}-a-broken", netns=False)
    (broken.proc_sys / "net/ipv4/ip_local_port_range").write_text("garbage\n")
    others = [node_factory(sysctls=WIDENED, netns=False) for _ in range(3)]
    name = f"{test_id}-halt"
    policies.create(
        name, enforce_spec(node_factory.selector, rollout={"maxConcurrent": 1, "maxFailedNodes": 1})
    )
    body = wait_policy(
        policies, name, lambda b: condition(b, "Degraded").get("status") == "True", "Degraded"
    )
    assert "halted" in condition(body, "Degraded")["message"]

    # The alert goes to firing in Prometheus itself, from what it scraped.
    [alert] = wait_for(
        lambda: prometheus.firing("NodeSysctlRolloutHalted", name),
        timeout=60,
        what="NodeSysctlRolloutHalted firing",
    )
    assert alert["labels"]["severity"] == "critical"
    assert name in alert["annotations"]["summary"]

    # The metrics say what the status says (the gauge is set before the status is written).
    status = policies.get(name)["status"]
    by_state = nodes_by_state(metrics_address, name)
    assert by_state["failed"] == status["failed"] == 1
    assert by_state["compliant"] + by_state["remediated"] == status["compliant"] == 0
    assert by_state["pending"] == status["pending"] == 3
    assert sum(by_state.values()) == status["nodes"] == 4
    samples = scrape(metrics_address)
    key = frozenset({("policy", name)})
    assert samples[("nodesysctl_rollout_halted", key)] == 1
    failed = frozenset({("policy", name), ("result", "failed")})
    assert samples[("nodesysctl_checks_total", failed)] == 1
    assert samples[("nodesysctl_check_duration_seconds_count", key)] == 1
    assert prometheus_value(prometheus, f'nodesysctl_nodes{{policy="{name}",state="failed"}}') == 1
    assert all(n.get_sysctl(RANGE) == "1024\t65000" for n in others)  # halted: none checked

    # Deleted: its series leave /metrics, so its alerts resolve; the operator's own stay.
    policies.delete(name, timeout=120)
    after = scrape(metrics_address)
    assert policy_series(after, name) == {}
    wait_for(
        lambda: not [a for a in prometheus.alerts() if a["labels"].get("policy") == name],
        timeout=60,
        what=f"{name}'s alerts resolved",
    )
    assert any(k[0] == "nodesysctl_reconcile_duration_seconds_count" for k in after)
    assert operator.process is not None
    assert operator.process.poll() is None
