"""A real Prometheus (Debian's 2.42, `make prometheus`) scrapes the operator's own /metrics
server, fed by `OperatorMetrics` as a pass feeds it, and evaluates the shipped rules: the
exposition is what Prometheus accepts, a halted rollout fires in its /api/v1/alerts, and a
deleted policy's alert resolves once its series are removed. No cluster: the operator process
end to end is tests/e2e/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.prometheus import PrometheusServer, fast_rule_groups
from devcluster.waiting import wait_for
from nodesysctl.metrics import OperatorMetrics, serve
from nodesysctl.planning import PolicySummary

from .test_alerts import promtool


@pytest.fixture
def exporter() -> tuple[OperatorMetrics, str]:
    metrics = OperatorMetrics.create()
    host, port = serve(("127.0.0.1", 0), metrics)
    return metrics, f"{host}:{port}"


@pytest.fixture
def prometheus(exporter: tuple[OperatorMetrics, str], tmp_path: Path) -> Iterator[PrometheusServer]:
    promtool()  # skips (or fails under make test) without the unpacked package
    server = PrometheusServer(tmp_path, [exporter[1]], fast_rule_groups()).start()
    yield server
    server.stop()


def summary(failed: int) -> PolicySummary:
    return PolicySummary(
        nodes=4, compliant=4 - failed, drifted=0, failed=failed, pending=0, in_flight=0, worst=()
    )


def test_prometheus_scrapes_the_exposition_and_fires_and_resolves_the_alerts(
    exporter: tuple[OperatorMetrics, str], prometheus: PrometheusServer
) -> None:
    metrics, _ = exporter
    metrics.set_leader("op-0", True)
    metrics.seed_policy("halted")
    metrics.seed_policy("fine")
    metrics.record_status("halted", summary(failed=2), halted=True)
    metrics.record_status("fine", summary(failed=0), halted=False)
    wait_for(prometheus.targets_up, timeout=30, what="the target up")

    alert: dict[str, Any] = wait_for(
        lambda: prometheus.firing("NodeSysctlRolloutHalted", "halted"),
        timeout=30,
        what="NodeSysctlRolloutHalted firing",
    )[0]
    assert alert["labels"]["severity"] == "critical"
    assert not prometheus.firing("NodeSysctlRolloutHalted", "fine")
    [failed] = prometheus.query('nodesysctl_nodes{policy="halted",state="failed"}')
    assert failed["value"][1] == "2"
    assert not prometheus.query('ALERTS{alertname="NodeSysctlNoLeader"}')

    metrics.forget_policy("halted")  # deleted
    wait_for(
        lambda: not [a for a in prometheus.alerts() if a["labels"].get("policy") == "halted"],
        timeout=30,
        what="the deleted policy's alerts resolved",
    )
    assert prometheus.query('nodesysctl_nodes{policy="fine",state="compliant"}')
