"""The metrics: their values after what a pass, the daemon and the node watch did, and the
exposition Prometheus reads (names, labels, pre-seeded zeros, a deleted policy's series gone),
also over real HTTP from the server `nodesysctl run` starts.

Each test records into its own `OperatorMetrics` (the process-wide one is left alone). The
passes are the fakes of tests/unit/test_reconcile.py; the end-to-end proof against a real
Prometheus is tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodesysctl import metrics as metrics_module
from nodesysctl.jobs import JobSettings
from nodesysctl.metrics import OperatorMetrics, parse_bind_address, serve
from nodesysctl.nodewatch import NodeWatch
from nodesysctl.pacing import RestartLimiter
from nodesysctl.planning import NodeFacts, NodeState, PolicySummary
from nodesysctl.reconcile import PassResult, PolicyReconciler

from .test_daemon import FakeReconciler, listed_state
from .test_daemon import daemon as make_daemon
from .test_nodewatch import ScriptedApi
from .test_reconcile import (
    NOW,
    POLICY,
    SPEC,
    RecordingKube,
    agent_message,
    deployment,
    finished_job,
    pod,
    pod_outcome,
    remediated,
    snapshot,
)

FAMILIES = {
    "nodesysctl_nodes": ("gauge", {"policy", "state"}),
    "nodesysctl_checks": ("counter", {"policy", "result"}),
    "nodesysctl_check_duration_seconds": ("histogram", {"policy"}),
    "nodesysctl_remediations": ("counter", {"policy"}),
    "nodesysctl_restarts": ("counter", {"policy", "kind", "result"}),
    "nodesysctl_restarts_skipped": ("counter", {"policy", "reason"}),
    "nodesysctl_rollout_halted": ("gauge", {"policy"}),
    "nodesysctl_reconcile_errors": ("counter", {"policy"}),
    "nodesysctl_reconcile_duration_seconds": ("histogram", set()),
    "nodesysctl_node_watch_last_event_timestamp_seconds": ("gauge", set()),
    "nodesysctl_leader": ("gauge", {"identity"}),
    "nodesysctl_build_info": ("gauge", {"version"}),
}


def fresh() -> OperatorMetrics:
    return OperatorMetrics.create(process=False)


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def samples(metrics: OperatorMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition, parsed as Prometheus parses it."""
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def reconciler(kube: RecordingKube, metrics: OperatorMetrics) -> PolicyReconciler:
    return PolicyReconciler(
        kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10), metrics=metrics
    )


# --- the exposition ---------------------------------------------------------------------


def test_names_types_and_labels_follow_the_ecosystem() -> None:
    metrics = fresh()
    metrics.seed_policy("p")
    metrics.set_leader("op-0", True)
    text = metrics.exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == set(FAMILIES)
    for name, (kind, labels) in FAMILIES.items():
        family = families[name]
        assert family.type == kind, name
        assert family.samples, f"{name} has no series"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample
    # Counters are exposed with _total, and without a _created series beside them.
    assert "nodesysctl_checks_total{" in text
    assert "_created" not in text
    assert "node=" not in text  # no per-node label: bounded at any cluster size


def test_a_standby_exports_only_who_it_is_and_that_it_does_not_lead() -> None:
    metrics = fresh()
    metrics.seed_policy("p")  # a leader's series, kept if this process leads again
    metrics.set_leader("op-1", False)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert set(families) == {"nodesysctl_leader", "nodesysctl_build_info"}
    assert [s.value for s in families["nodesysctl_leader"].samples] == [0.0]
    metrics.set_leader("op-1", True)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert set(families) == set(FAMILIES)
    assert [s.value for s in families["nodesysctl_leader"].samples] == [1.0]


def test_a_policys_counters_are_pre_seeded_at_zero_with_every_label_value() -> None:
    metrics = fresh()
    metrics.seed_policy("p")
    got = samples(metrics)
    for result in ("compliant", "remediated", "drifted", "failed"):
        assert (
            got[("nodesysctl_checks_total", frozenset({("policy", "p"), ("result", result)}))] == 0
        )
    restart_series = [
        ("Deployment", "restarted"),
        ("StatefulSet", "restarted"),
        ("DaemonSet", "evicted"),
        ("DaemonSet", "blocked"),
        ("DaemonSet", "gone"),
    ]
    for kind, result in restart_series:
        key = frozenset({("policy", "p"), ("kind", kind), ("result", result)})
        assert got[("nodesysctl_restarts_total", key)] == 0
    for reason in ("paused", "eviction_blocked", "not_restartable", "not_selected", "already_done"):
        key = frozenset({("policy", "p"), ("reason", reason)})
        assert got[("nodesysctl_restarts_skipped_total", key)] == 0
    for state in ("compliant", "remediated", "drifted", "failed", "pending", "waiting"):
        assert got[("nodesysctl_nodes", frozenset({("policy", "p"), ("state", state)}))] == 0
    assert got[("nodesysctl_remediations_total", frozenset({("policy", "p")}))] == 0
    assert got[("nodesysctl_reconcile_errors_total", frozenset({("policy", "p")}))] == 0
    assert got[("nodesysctl_rollout_halted", frozenset({("policy", "p")}))] == 0
    # Seeding again (a restarted daemon) keeps what was counted.
    metrics.record_check("p", NodeState.FAILED, 3.0)
    metrics.seed_policy("p")
    assert value(metrics, "nodesysctl_checks_total", policy="p", result="failed") == 1


def test_a_deleted_policys_series_are_removed_and_the_others_kept() -> None:
    metrics = fresh()
    for policy in ("gone", "kept"):
        metrics.seed_policy(policy)
        metrics.record_check(policy, NodeState.REMEDIATED, 12.0)
    metrics.forget_policy("gone")
    text = metrics.exposition().decode()
    assert 'policy="gone"' not in text
    assert value(metrics, "nodesysctl_checks_total", policy="kept", result="remediated") == 1
    assert value(metrics, "nodesysctl_check_duration_seconds_count", policy="kept") == 1
    assert value(metrics, "nodesysctl_build_info", version=metrics_module._version()) == 1


def test_the_node_gauge_splits_the_status_compliant_into_compliant_and_remediated() -> None:
    metrics = fresh()
    summary = PolicySummary(
        nodes=10, compliant=6, drifted=1, failed=1, pending=1, in_flight=0, worst=(),
        waiting=1, remediated=2,
    )  # fmt: skip
    metrics.record_status("p", summary, halted=True)
    by_state = {
        state: value(metrics, "nodesysctl_nodes", policy="p", state=state)
        for state in ("compliant", "remediated", "drifted", "failed", "pending", "waiting")
    }
    assert by_state == {
        "compliant": 4, "remediated": 2, "drifted": 1, "failed": 1, "pending": 1, "waiting": 1
    }  # fmt: skip
    assert sum(v or 0 for v in by_state.values()) == summary.nodes
    assert value(metrics, "nodesysctl_rollout_halted", policy="p") == 1
    metrics.record_status("p", summary, halted=False)
    assert value(metrics, "nodesysctl_rollout_halted", policy="p") == 0


# --- what the passes record ----------------------------------------------------------------


def test_a_recorded_check_counts_its_result_and_its_duration_since_the_job_was_created() -> None:
    metrics = fresh()
    kube = RecordingKube()
    job = finished_job("n1", created_at=NOW - timedelta(seconds=42))
    outcome = pod_outcome("job-n1", 0, agent_message("Remediated"), "Completed")
    snap = snapshot([NodeFacts("n1", {}, "boot-1", {})], jobs=[job], outcomes={"job-n1": outcome})
    reconciler(kube, metrics).run_once(snap, NOW)
    assert value(metrics, "nodesysctl_checks_total", policy=POLICY, result="remediated") == 1
    assert value(metrics, "nodesysctl_remediations_total", policy=POLICY) == 1
    assert value(metrics, "nodesysctl_check_duration_seconds_count", policy=POLICY) == 1
    assert value(metrics, "nodesysctl_check_duration_seconds_sum", policy=POLICY) == 42
    assert value(metrics, "nodesysctl_check_duration_seconds_bucket", policy=POLICY, le="30.0") == 0
    assert value(metrics, "nodesysctl_check_duration_seconds_bucket", policy=POLICY, le="60.0") == 1
    # The status the pass wrote and the gauge agree.
    status = kube.status_patches[-1]
    compliant = value(metrics, "nodesysctl_nodes", policy=POLICY, state="compliant") or 0
    fixed = value(metrics, "nodesysctl_nodes", policy=POLICY, state="remediated") or 0
    assert (compliant, fixed) == (0, 1)
    assert compliant + fixed == status["compliant"] == 1


def test_a_failed_check_and_a_halted_rollout() -> None:
    metrics = fresh()
    kube = RecordingKube()
    job = finished_job("n1", succeeded=False, reason="DeadlineExceeded: too long")
    nodes = [NodeFacts(name, {}, "boot-1", {}) for name in ("n1", "n2", "n3")]
    spec = {**SPEC, "rollout": {"maxConcurrent": 1, "maxFailedNodes": 1}}
    reconciler(kube, metrics).run_once(snapshot(nodes, spec=spec, jobs=[job]), NOW)
    assert value(metrics, "nodesysctl_checks_total", policy=POLICY, result="failed") == 1
    assert value(metrics, "nodesysctl_remediations_total", policy=POLICY) is None  # not seeded
    assert value(metrics, "nodesysctl_nodes", policy=POLICY, state="failed") == 1
    assert value(metrics, "nodesysctl_rollout_halted", policy=POLICY) == 1
    assert kube.status_patches[-1]["failed"] == 1


def test_a_restart_wave_counts_restarts_and_what_it_left_out() -> None:
    metrics = fresh()
    kube = RecordingKube(
        workloads=[deployment("web"), deployment("frozen", paused=True)],
        pods=[pod("web"), pod("frozen")],
    )
    reconciler(kube, metrics).run_once(snapshot([remediated("n1")]), NOW)
    assert [name for _, name, _ in kube.workload_patches] == ["web"]
    restarted = {"policy": POLICY, "kind": "Deployment", "result": "restarted"}
    assert value(metrics, "nodesysctl_restarts_total", **restarted) == 1
    assert value(metrics, "nodesysctl_restarts_skipped_total", policy=POLICY, reason="paused") == 1


def test_refused_evictions_count_each_try_and_once_the_give_up() -> None:
    metrics = fresh()
    spec = {**SPEC, "restart": {**SPEC["restart"], "kinds": ["DaemonSet"]}}
    kube = RecordingKube(
        workloads=[deployment("guarded", kind="DaemonSet")],
        pods=[pod("guarded", kind="DaemonSet")],
    )
    kube.refuse_evictions.add("guarded-n1")
    passes = reconciler(kube, metrics)
    moment = NOW
    result = passes.run_once(snapshot([remediated("n1")], spec=spec), moment)
    for _ in range(6):
        if "n1" in result.recorded:
            break
        moment += timedelta(seconds=10)
        status = kube.status_patches[-1]
        result = passes.run_once(snapshot([remediated("n1")], spec=spec, status=status), moment)
    assert kube.evictions == ["guarded-n1"] * 5
    blocked = {"policy": POLICY, "kind": "DaemonSet", "result": "blocked"}
    assert value(metrics, "nodesysctl_restarts_total", **blocked) == 5
    given_up = {"policy": POLICY, "reason": "eviction_blocked"}
    assert value(metrics, "nodesysctl_restarts_skipped_total", **given_up) == 1


def test_the_daemon_seeds_its_policy_and_counts_failed_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = fresh()
    state = listed_state()
    passes = FakeReconciler(RuntimeError("apiserver down"), PassResult(30.0, {}))
    loop = make_daemon(state, passes)
    loop.metrics = metrics
    asyncio.run(loop.run_one_pass())
    assert value(metrics, "nodesysctl_reconcile_errors_total", policy="p") == 1
    asyncio.run(loop.run_one_pass())
    assert value(metrics, "nodesysctl_reconcile_errors_total", policy="p") == 1
    assert value(metrics, "nodesysctl_reconcile_duration_seconds_count") == 2

    async def first_pass_then_stop() -> None:
        async def stop(*_: object) -> None:
            raise asyncio.CancelledError

        monkeypatch.setattr(loop, "wait", stop)
        loop.reconciler = FakeReconciler(PassResult(30.0, {}))
        with pytest.raises(asyncio.CancelledError):
            await loop.run()

    other = fresh()
    loop.metrics = other
    asyncio.run(first_pass_then_stop())
    assert value(other, "nodesysctl_reconcile_errors_total", policy="p") == 0  # seeded


def test_the_node_watch_stamps_every_answer_of_the_api_server() -> None:
    metrics = fresh()
    assert value(metrics, "nodesysctl_node_watch_last_event_timestamp_seconds") == 0
    api = ScriptedApi(lists=[([], "10")], watches=[[("BOOKMARK", {"metadata": {}})]])
    api.watch = NodeWatch(api, lambda _: None, sleep=lambda _: False, metrics=metrics)
    before = time.time()
    api.watch.run()
    stamp = value(metrics, "nodesysctl_node_watch_last_event_timestamp_seconds")
    assert stamp is not None
    assert stamp >= before


# --- the server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":8081", ("0.0.0.0", 8081)), ("127.0.0.1:9000", ("127.0.0.1", 9000)),
     ("[::1]:8081", ("::1", 8081)), ("0", None), ("", None)],
)  # fmt: skip
def test_bind_addresses(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_bind_address(text) == expected


@pytest.mark.parametrize("text", ["8081", "host:", "host:http", ":99999"])
def test_bad_bind_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_bind_address(text)


def test_the_server_answers_the_text_format_over_http() -> None:
    metrics = fresh()
    metrics.seed_policy("p")
    metrics.set_leader("op-0", True)
    host, port = serve(("127.0.0.1", 0), metrics)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    assert 'nodesysctl_leader{identity="op-0"} 1.0' in text
    assert 'nodesysctl_checks_total{policy="p",result="failed"} 0.0' in text
    # Taken: reported at start, never hidden.
    with pytest.raises(OSError, match="in use"):
        serve(("127.0.0.1", port), metrics)
