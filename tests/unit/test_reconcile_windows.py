"""Maintenance windows in a reconcile pass, on an injected clock: fixes run check-only and
restart waves wait outside their windows, a wave cut by the end of one resumes at the next
opening (each workload once), and unverified nodes are exempt. The fake client is
`tests.unit.test_reconcile`'s; the e2e proof is tests/e2e/test_windows.py."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

from nodesysctl.agent.contract import AgentSpec
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings
from nodesysctl.labels import ANNOTATION_REASON, RESTART_WAVE
from nodesysctl.maintenance import DEFERRED_CONDITION, RESTARTS_DEFERRED_EVENT, gate
from nodesysctl.pacing import IDLE_POLL_SECONDS, INVALID_POLL_SECONDS, RestartLimiter
from nodesysctl.planning import (
    CheckReason,
    NodeFacts,
    NodeResult,
    NodeState,
    check_reason,
    format_time,
    spec_hash,
)
from nodesysctl.reconcile import PolicyReconciler
from nodesysctl.restarts import RestartAction, WorkloadStep
from tests.unit.test_reconcile import (
    NOW,
    POLICY,
    SPEC,
    RecordingKube,
    deployment,
    event_messages,
    finished_job,
    pod,
    pod_outcome,
    remediated,
    snapshot,
    stored_result,
)

# NOW is Wednesday 2026-11-25 12:00 UTC: this window is open and closes a minute later; it
# opens again a week on.
CLOSING_SOON = {"days": ["Wednesday"], "start": "11:00", "end": "12:01"}
NEXT_OPENING = datetime.fromisoformat("2026-12-02T11:00:00+00:00")
# Closed at NOW, opens a minute later.
OPENS_SOON = {"start": "12:01", "end": "13:00"}
AT_OPENING = NOW + timedelta(seconds=60)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def windowed_reconciler(kube: RecordingKube, clock: Clock) -> PolicyReconciler:
    """One restart token every 10 s, no burst: a wave of three spans passes."""
    return PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(6, 1, clock))


def restart_spec(window: dict[str, Any]) -> dict[str, Any]:
    return {
        **SPEC,
        "restart": {**SPEC["restart"], "kinds": ["Deployment", "DaemonSet"], "window": window},
    }


def restarted(kube: RecordingKube) -> list[str]:
    return [name for _, name, _ in kube.workload_patches]


def deferred(kube: RecordingKube) -> dict[str, Any]:
    [found] = [c for c in kube.status_patches[-1]["conditions"] if c["type"] == DEFERRED_CONDITION]
    return dict(found)


def workloads() -> RecordingKube:
    names = ["a", "b", "c"]
    return RecordingKube(workloads=[deployment(n) for n in names], pods=[pod(n) for n in names])


def test_a_wave_cut_by_the_end_of_the_window_resumes_at_the_next_opening_once_each() -> None:
    kube, clock = workloads(), Clock()
    rec = windowed_reconciler(kube, clock)
    spec = restart_spec(CLOSING_SOON)
    rec.run_once(snapshot([remediated("n1")], spec=spec), NOW)
    assert restarted(kube) == ["a"]  # one token; the rest waits for the next
    assert deferred(kube)["status"] == "False"

    # The window closed: tokens are there, but nothing restarts; the status says until when.
    for seconds in (70, 130):
        clock.now = seconds
        result = rec.run_once(
            snapshot([remediated("n1")], spec=spec), NOW + timedelta(seconds=seconds)
        )
        assert restarted(kube) == ["a"]
        condition = deferred(kube)
        assert (condition["status"], condition["reason"]) == ("True", "RestartWindowClosed")
        assert format_time(NEXT_OPENING) in condition["message"]
        assert (
            "2 restarts wait for the restart window (Wednesday 11:00-12:01 UTC)"
            in condition["message"]
        )
        assert result.delay == IDLE_POLL_SECONDS  # a week away: polled, never a busy loop
        assert kube.status_patches[-1]["restartWave"]["remaining"] == 2
    assert len(event_messages(kube, "NodeSysctlPolicy", RESTARTS_DEFERRED_EVENT)) == 1

    # The next opening: the rest of the same wave, each once, at the rate limit; what a pass
    # records on the node is what the next one sees (the state's write-through).
    node = remediated("n1")
    for seconds in (0, 10, 20, 30):
        clock.now = 1000.0 + seconds
        done = rec.run_once(snapshot([node], spec=spec), NEXT_OPENING + timedelta(seconds=seconds))
        node = node.with_result(POLICY, done.recorded.get("n1"))
    assert node.results[POLICY].restart_pending is False
    assert restarted(kube) == ["a", "b", "c"]
    assert kube.lists == ["pods", "replicasets"]  # planned once, kept across the closed window
    waves = {
        p["spec"]["template"]["metadata"]["annotations"][RESTART_WAVE]
        for _, _, p in kube.workload_patches
    }
    assert len(waves) == 1
    assert event_messages(kube, "NodeSysctlPolicy", "RestartWaveComplete")


def test_an_operator_restarted_while_the_window_was_closed_does_not_restart_twice() -> None:
    kube, clock = workloads(), Clock()
    windowed_reconciler(kube, clock).run_once(
        snapshot([remediated("n1")], spec=restart_spec(CLOSING_SOON)), NOW
    )
    [(_, _, patch)] = kube.workload_patches
    wave = patch["spec"]["template"]["metadata"]["annotations"][RESTART_WAVE]

    # A new process at the next opening plans the wave again and finds "a" stamped with it.
    again = RecordingKube(
        workloads=[deployment("a", wave=wave), deployment("b"), deployment("c")],
        pods=[pod(n) for n in "abc"],
    )
    fresh = PolicyReconciler(again, JobSettings(namespace="jobs"), RestartLimiter(600, 10))
    fresh.run_once(snapshot([remediated("n1")], spec=restart_spec(CLOSING_SOON)), NEXT_OPENING)
    assert restarted(again) == ["b", "c"]


def test_the_pass_requeues_for_the_opening_of_the_restart_window() -> None:
    kube, clock = workloads(), Clock()
    rec = windowed_reconciler(kube, clock)
    result = rec.run_once(snapshot([remediated("n1")], spec=restart_spec(OPENS_SOON)), NOW)
    assert restarted(kube) == []
    assert result.delay == 60.0
    clock.now = 60.0
    rec.run_once(snapshot([remediated("n1")], spec=restart_spec(OPENS_SOON)), AT_OPENING)
    assert restarted(kube) == ["a"]


def test_daemonset_pods_on_an_unverified_node_are_evicted_whatever_the_window() -> None:
    kube = RecordingKube(
        workloads=[deployment("web"), deployment("agent", kind="DaemonSet")],
        pods=[pod("web"), pod("agent", kind="DaemonSet"), pod("agent", "n2", kind="DaemonSet")],
    )
    snap = snapshot([remediated("n1"), remediated("n2")], spec=restart_spec(OPENS_SOON))
    rec = PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10))
    rec.run_once(dataclasses.replace(snap, unverified=frozenset({"n1"})), NOW)
    assert kube.evictions == ["agent-n1"]  # the tainted node serves nothing yet
    assert restarted(kube) == []  # a rollout reaches every node: it waits
    assert "2 restarts wait" in deferred(kube)["message"]


def agent_specs(kube: RecordingKube) -> dict[str, AgentSpec]:
    specs = {}
    for job in kube.jobs_created:
        [container] = job["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        node = job["metadata"]["annotations"]["nodesysctl.io/node"]
        specs[node] = AgentSpec.model_validate_json(args[args.index("--spec-json") + 1])
    return specs


def rollout_spec(window: dict[str, Any]) -> dict[str, Any]:
    return {**SPEC, "rollout": {**SPEC["rollout"], "window": window}}


def test_outside_the_rollout_window_checks_run_check_only_but_unverified_nodes_are_fixed() -> None:
    kube = RecordingKube()
    nodes = [NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})]
    snap = snapshot(nodes, spec=rollout_spec(OPENS_SOON))
    PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10)).run_once(
        dataclasses.replace(snap, unverified=frozenset({"n2"})), NOW
    )
    specs = agent_specs(kube)
    assert (str(specs["n1"].mode), str(specs["n2"].mode)) == ("Audit", "Enforce")
    mounts = {
        job["metadata"]["annotations"]["nodesysctl.io/node"]: [
            m["name"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        ]
        for job in kube.jobs_created
    }
    assert "host-sysctl-d" not in mounts["n1"]  # writes nothing
    assert "host-sysctl-d" in mounts["n2"]


def audit_drift() -> str:
    return json.dumps(
        {
            "policy": POLICY,
            "status": "Drifted",
            "mode": "Audit",
            "checkedAt": "2026-11-25T12:00:00Z",
            "drift": ["ip_local_port_range 1024 65000 is outside 32768-60999"],
        }
    )


def test_drift_found_check_only_is_reported_and_fixed_once_the_window_opens() -> None:
    kube = RecordingKube()
    spec = rollout_spec(OPENS_SOON)
    outcome = pod_outcome("job-n1", 0, audit_drift(), "Completed")
    result = PolicyReconciler(
        kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10)
    ).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            spec=spec,
            jobs=[finished_job("n1")],
            outcomes={"job-n1": outcome},
        ),
        NOW,
    )
    stored = stored_result(kube)
    assert (stored.status, stored.fix_deferred, stored.restart_pending) == (
        NodeState.DRIFTED,
        True,
        False,
    )
    assert stored.message.startswith(
        f"fix waits for the rollout window (opens {format_time(AT_OPENING)})"
    )
    assert ("Node", "n1", "DriftDetected") in kube.events
    condition = deferred(kube)
    assert (condition["status"], condition["reason"]) == ("True", "RolloutWindowClosed")
    assert "fixes of 1 drifted nodes wait" in condition["message"]
    assert kube.jobs_created == []  # no second check before the window opens
    assert result.delay == 60.0

    # At the opening the node is checked again, this time fixing.
    opened = RecordingKube()
    node = NodeFacts("n1", {}, "boot-1", {POLICY: stored})
    PolicyReconciler(opened, JobSettings(namespace="jobs"), RestartLimiter(600, 10)).run_once(
        snapshot([node], spec=spec), AT_OPENING
    )
    [job] = opened.jobs_created
    assert job["metadata"]["annotations"][ANNOTATION_REASON] == "FixWindowOpened"
    assert str(agent_specs(opened)["n1"].mode) == "Enforce"


def test_a_check_only_result_survives_its_annotation() -> None:
    result = NodeResult(NodeState.DRIFTED, "h", "b", NOW, "j", "m", fix_deferred=True)
    assert NodeResult.from_annotation(result.to_annotation()) == result.as_stored()
    assert result.as_stored().fix_deferred
    assert "fixDeferred" not in NodeResult(NodeState.DRIFTED, "h", "b", NOW, "j").to_annotation()


def test_a_time_zone_the_operator_does_not_know_is_invalid_and_reported_once() -> None:
    kube = RecordingKube()
    rec = PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10))
    spec = rollout_spec({"start": "01:00", "end": "02:00", "timeZone": "Mars/Olympus"})
    first = rec.run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})], spec=spec), NOW)
    invalid = {c["type"]: c for c in kube.status_patches[-1]["conditions"]}["Invalid"]
    assert invalid["status"] == "True"
    assert "Mars/Olympus" in invalid["message"]
    assert first.delay == INVALID_POLL_SECONDS
    rec.run_once(
        snapshot([NodeFacts("n1", {}, "boot-1", {})], spec=spec, status=kube.status_patches[-1]),
        NOW,
    )
    assert [e for e in kube.events if e[2] == "InvalidSpec"] == [
        ("NodeSysctlPolicy", POLICY, "InvalidSpec")
    ]
    assert kube.jobs_created == []


def test_a_policy_without_windows_reports_no_deferred_condition() -> None:
    kube = RecordingKube()
    PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10)).run_once(
        snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW
    )
    assert DEFERRED_CONDITION not in {c["type"] for c in kube.status_patches[-1]["conditions"]}


def test_the_gate_holds_restarts_but_not_evictions_on_unverified_nodes() -> None:
    spec = parse_spec(restart_spec(OPENS_SOON))
    closed = gate(spec, NOW, unverified={"n1"})
    step = WorkloadStep(RestartAction.EVICT, "DaemonSet", "apps", "agent", "u", node="n1")
    assert closed.step_goes(step)
    assert not closed.step_goes(
        WorkloadStep(RestartAction.EVICT, "DaemonSet", "apps", "agent", "u", node="n2")
    )
    assert not closed.step_goes(
        WorkloadStep(RestartAction.RESTART, "Deployment", "apps", "web", "u")
    )
    assert gate(spec, AT_OPENING).step_goes(
        WorkloadStep(RestartAction.RESTART, "Deployment", "apps", "web", "u")
    )
    # An Audit policy never fixes, so its checks are never "check-only" for a window.
    audit = parse_spec({**rollout_spec(OPENS_SOON), "remediation": {"mode": "Audit"}})
    assert not gate(audit, NOW).check_only("n1")
    assert spec_hash(parse_spec(rollout_spec(OPENS_SOON))) == spec_hash(parse_spec(SPEC))


def test_a_node_whose_restart_waits_is_not_rechecked_until_the_wave_is_done() -> None:
    """A recheck would record a result without the pending restart and drop the node from a
    wave that waits for its window; a new boot still is checked at once."""
    waiting = remediated("n1")
    later = NOW + timedelta(days=7)
    assert check_reason(waiting, POLICY, spec_hash(parse_spec(SPEC)), later, 3600.0) == (None, None)
    rebooted = dataclasses.replace(waiting, boot_id="boot-2")
    assert check_reason(rebooted, POLICY, spec_hash(parse_spec(SPEC)), later, 3600.0)[0] == (
        CheckReason.REBOOTED
    )


def test_a_node_found_compliant_check_only_is_checked_again_at_the_opening() -> None:
    """A check-only run cannot tell whether the persistence file is what the composition
    wants, so the node is checked once more, fixing, when the window opens; meanwhile nothing
    is reported as waiting, but the pass still requeues for the opening."""
    spec = rollout_spec(OPENS_SOON)
    compliant = NodeResult(
        NodeState.COMPLIANT, spec_hash(parse_spec(spec)), "boot-1", NOW, "job-n1", fix_deferred=True
    )
    node = NodeFacts("n1", {}, "boot-1", {POLICY: compliant})
    kube = RecordingKube()
    rec = PolicyReconciler(kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10))
    result = rec.run_once(snapshot([node], spec=spec), NOW)
    assert kube.jobs_created == []
    assert deferred(kube)["status"] == "False"
    assert result.delay == 60.0
    rec.run_once(snapshot([node], spec=spec), AT_OPENING)
    [job] = kube.jobs_created
    assert job["metadata"]["annotations"][ANNOTATION_REASON] == "FixWindowOpened"
