"""The benchmark's node-health guard and its stop/cap rule, against a fake cluster."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from bench.__main__ import Cap, table
from bench.health import NodeHealth, NodeHealthError, RunStoppedError
from devcluster.kubelet.readiness import UNREACHABLE_TAINT, NodeReadiness, ReadyChange
from devcluster.kubelet.renewals import LeaseStats

GRACE = 180.0
HEALTHY_LEASES = LeaseStats(
    nodes=50, period_seconds=36.0, parallelism=4, renewals=100, failures=0,
    max_gap_seconds=36.1, oldest_lease_age_seconds=35.0, max_late_seconds=0.1,
    mean_latency_ms=5.0, p50_latency_ms=4.0, p99_latency_ms=30.0, max_latency_ms=50.0,
    never_renewed=0,
)  # fmt: skip


class FakeReadiness:
    def __init__(self) -> None:
        self.changes: list[ReadyChange] = []
        self.unhealthy_nodes: dict[str, NodeReadiness] = {}

    def changes_since(self, at: float) -> list[ReadyChange]:
        return [c for c in self.changes if c.at >= at]

    def unhealthy(self, names: list[str]) -> dict[str, NodeReadiness]:
        return {n: r for n, r in self.unhealthy_nodes.items() if n in names}


class FakeKubelet:
    def __init__(self) -> None:
        self.readiness = FakeReadiness()
        self.leases = HEALTHY_LEASES
        self.resets = 0

    def lease_stats(self, *, reset: bool = False) -> LeaseStats:
        self.resets += reset
        return self.leases


class FakeEvents:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def list_namespaced_event(self, namespace: str, **kwargs: Any) -> Any:
        assert namespace == "default"
        assert kwargs["field_selector"] == "involvedObject.kind=Node,reason=NodeNotReady"
        return SimpleNamespace(data=json.dumps({"items": self.items}).encode())


@pytest.fixture
def kubelet() -> FakeKubelet:
    return FakeKubelet()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> FakeEvents:
    fake = FakeEvents()
    monkeypatch.setattr("bench.health.client.CoreV1Api", lambda api: fake)
    return fake


@pytest.fixture
def health(kubelet: FakeKubelet, events: FakeEvents) -> NodeHealth:
    cluster = SimpleNamespace(
        kubelet=kubelet,
        kubelet_errors=[],
        control_plane=SimpleNamespace(node_monitor_grace_seconds=GRACE),
    )
    guard = NodeHealth(SimpleNamespace(cluster=cluster, api=None))  # type: ignore[arg-type]
    guard.arm()
    return guard


def test_a_healthy_measurement_passes_and_is_recorded(
    health: NodeHealth, kubelet: FakeKubelet
) -> None:
    health.check()
    record = health.finish()
    assert record["leases"]["max_gap_seconds"] == 36.1
    assert record["lease_budget_seconds"] == GRACE / 2
    assert (record["ready_changes"], record["node_not_ready_events"]) == (0, 0)
    assert kubelet.resets == 1  # arm() starts a new window


def test_a_node_leaving_ready_stops_the_measurement(
    health: NodeHealth, kubelet: FakeKubelet
) -> None:
    kubelet.readiness.changes = [
        ReadyChange("bench-00001", "Unknown", "NodeStatusUnknown", time.time() - 3600),  # before
        ReadyChange("bench-00007", "Unknown", "NodeStatusUnknown", time.time()),
    ]
    with pytest.raises(NodeHealthError, match=r"^1 nodes went NotReady during the measurement "
                       r"\(bench-00007: Ready=Unknown \(NodeStatusUnknown\)\)$"):  # fmt: skip
        health.check()


def test_leases_falling_behind_stop_the_measurement_and_say_why(
    health: NodeHealth, kubelet: FakeKubelet
) -> None:
    kubelet.leases = replace(HEALTHY_LEASES, nodes=5000, oldest_lease_age_seconds=95.0)
    with pytest.raises(NodeHealthError) as stopped:
        health.check()
    assert str(stopped.value) == (
        "Lease renewals fell behind: a Lease went 95 s without renewal, more than 50% of the "
        "180 s grace period (renew period 36 s, 4 workers, p99 latency 30 ms): this machine "
        "does not hold 5000 nodes"
    )


def test_a_dead_heartbeat_process_stops_the_measurement(health: NodeHealth) -> None:
    health.bench.cluster.kubelet_errors.append("the heartbeat process exited with code -9")
    with pytest.raises(NodeHealthError, match="kubelet's the heartbeat process exited"):
        health.check()


def test_the_controllers_not_ready_events_are_checked_at_the_end(
    health: NodeHealth, events: FakeEvents
) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    events.items = [
        {"involvedObject": {"name": "bench-00003"}, "lastTimestamp": stamp},
        {"involvedObject": {"name": "old"}, "lastTimestamp": "2020-01-01T00:00:00Z"},
    ]
    with pytest.raises(NodeHealthError, match=r"reported 1 nodes NotReady .*\(bench-00003\)"):
        health.finish()


def test_waiting_for_ready_nodes_names_those_that_are_not(
    health: NodeHealth, kubelet: FakeKubelet
) -> None:
    assert health.wait_healthy(["a", "b"], timeout=5) < 5
    kubelet.readiness.unhealthy_nodes = {"b": NodeReadiness("Unknown", "x", (UNREACHABLE_TAINT,))}
    with pytest.raises(NodeHealthError, match=r"^1 of 2 nodes not Ready after 0 s \(b: Ready="):
        health.wait_healthy(["a", "b"], timeout=0.1)


def test_a_stopped_size_caps_the_larger_ones() -> None:
    cap = Cap()

    def stop() -> dict[str, Any]:
        raise RunStoppedError("3 nodes went NotReady")

    assert cap.run({"nodes": 50}, lambda: {"nodes": 50, "ok": True}) == {"nodes": 50, "ok": True}
    assert cap.run({"nodes": 200}, stop) == {"nodes": 200, "stopped": "3 nodes went NotReady"}
    later = cap.run({"nodes": 1000}, lambda: pytest.fail("must not run"))
    assert later == {"nodes": 1000, "skipped": "capped: stopped at 200 nodes"}
    text = table({"max_concurrent": 50, "convergence": [
        {"nodes": 200, "cordon_percent": 5.0, "stopped": "3 nodes went NotReady"},
        {"nodes": 1000, "cordon_percent": 0.0, "skipped": "capped: stopped at 200 nodes"},
    ], "idle": []})  # fmt: skip
    assert "   200       5% STOPPED: 3 nodes went NotReady" in text
    assert "  1000       0% not run: capped: stopped at 200 nodes" in text
