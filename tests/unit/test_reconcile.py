"""Handler-level tests of one reconcile pass, with an in-memory stand-in for the API calls
(a `PassClient`: mypy checks the fake against the calls a pass makes).

These cover the decision paths in seconds; the end-to-end tests in tests/e2e prove the same
behaviour against a real control plane and real network namespaces.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodesysctl.agent.contract import AgentSpec
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings
from nodesysctl.kube import KubeError
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX, LABEL_SPEC_HASH, RESTART_WAVE
from nodesysctl.node_taints import PATCH_NOT_APPLIED
from nodesysctl.observed import PodOutcome
from nodesysctl.pacing import INVALID_POLL_SECONDS, RestartLimiter
from nodesysctl.planning import (
    JobFacts,
    NodeFacts,
    NodeResult,
    NodeState,
    PolicyRanges,
    spec_hash,
)
from nodesysctl.reconcile import PolicyReconciler, Snapshot
from nodesysctl.restarts import EvictionResult

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = "nodeport-safe"
POLICY_UID = "uid-1"
SPEC: dict[str, Any] = {
    "rollout": {"maxConcurrent": 5, "maxFailedNodes": 1},
    "restart": {"selector": {"matchLabels": {"restart": "yes"}}},
}


class RecordingKube:
    """Records every write; serves the reads a pass makes from fixed data."""

    def __init__(
        self,
        workloads: list[dict[str, Any]] | None = None,
        pods: list[dict[str, Any]] | None = None,
        existing_jobs: Mapping[str, dict[str, Any]] | None = None,
        job_pods: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.existing_jobs = dict(existing_jobs or {})  # by name: a create meets 409
        self.jobs_read: list[str] = []
        self.pods_of_jobs = job_pods or {}
        self.jobs_created: list[dict[str, Any]] = []
        self.jobs_deleted: list[str] = []
        self.node_patches: list[tuple[str, dict[str, Any]]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.workload_patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, str]] = []
        self.event_messages: list[str] = []
        self.workloads = workloads or []
        self.pods = pods or []
        self.replica_sets: list[dict[str, Any]] = [
            replica_set(w["metadata"]["name"]) for w in self.workloads if w["kind"] == "Deployment"
        ]
        self.lists: list[str] = []  # what was listed, in order
        self.reads: list[str] = []  # workloads read
        self.evictions: list[str] = []  # pods whose eviction was asked for
        self.refuse_evictions: set[str] = set()  # pods a PDB protects (429)
        self.status_writes: list[tuple[str, str]] = []  # ("status"|"workload"|"evict", what)
        self.node_bodies: dict[str, dict[str, Any]] = {}  # what get_node serves, by name
        self.json_patches: list[tuple[str, list[dict[str, Any]]]] = []

    def create_job(self, body: Mapping[str, Any]) -> bool:
        if body["metadata"]["name"] in self.existing_jobs:
            return False  # 409 AlreadyExists
        self.jobs_created.append(dict(body))
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.jobs_read.append(name)
        return self.existing_jobs.get(name)

    def delete_job(self, namespace: str, name: str) -> None:
        self.jobs_deleted.append(name)

    def job_events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        return []

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        return self.pods_of_jobs.get(job, [])

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        self.node_patches.append((name, dict(patch)))

    def get_node(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.node_bodies.get(name))

    def json_patch_node(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        """Applies a taints patch as the API server does: `test` the version, then `add`."""
        self.json_patches.append((name, [dict(op) for op in patch]))
        body = self.node_bodies[name]
        test, add = patch
        if test["value"] != body["metadata"]["resourceVersion"]:
            raise KubeError(422, "Invalid", PATCH_NOT_APPLIED, body='{"details":{}}')
        body["spec"]["taints"] = add["value"]
        body["metadata"]["resourceVersion"] = str(int(test["value"]) + 1)

    def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.status_patches.append(dict(status))
        if "restartBudget" in status:
            self.status_writes.append(("status", str(status["restartBudget"]["remaining"])))

    def list_pods(self, *, host_network_only: bool) -> list[dict[str, Any]]:
        self.lists.append("pods")
        return [p for p in self.pods if p["spec"].get("hostNetwork") or not host_network_only]

    def list_replica_sets(self) -> list[dict[str, Any]]:
        self.lists.append("replicasets")
        return self.replica_sets

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"{kind}/{namespace}/{name}")
        for body in self.workloads:
            meta = body["metadata"]
            if (body["kind"], meta["namespace"], meta["name"]) == (kind, namespace, name):
                return body
        return None

    def evict_pod(self, namespace: str, name: str, uid: str) -> tuple[EvictionResult, str]:
        self.evictions.append(name)
        if name in self.refuse_evictions:
            return EvictionResult.BLOCKED, "Cannot evict pod as it would violate the budget."
        self.status_writes.append(("evict", name))
        return EvictionResult.EVICTED, ""

    def patch_workload(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        self.workload_patches.append((kind, name, dict(patch)))
        self.status_writes.append(("workload", name))

    def post_event(
        self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str
    ) -> None:
        self.events.append((involved["kind"], involved["name"], reason))
        self.event_messages.append(message)


def reconciler(kube: RecordingKube, per_minute: float = 600, burst: int = 10) -> PolicyReconciler:
    return PolicyReconciler(
        kube,
        JobSettings(namespace="jobs"),
        RestartLimiter(per_minute, burst),
    )


def snapshot(
    nodes: list[NodeFacts],
    *,
    spec: dict[str, Any] | None = None,
    jobs: list[JobFacts] | None = None,
    outcomes: dict[str, PodOutcome] | None = None,
    candidates: dict[str, list[PodOutcome]] | None = None,
    status: dict[str, Any] | None = None,
) -> Snapshot:
    """`outcomes`: one pod outcome per job name; `candidates`: several (forged ones among them)."""
    pod_outcomes = {job: (outcome,) for job, outcome in (outcomes or {}).items()}
    return Snapshot(
        name=POLICY,
        uid=POLICY_UID,
        generation=2,
        created="2026-11-01T00:00:00Z",
        spec=spec if spec is not None else SPEC,
        status=status or {},
        nodes=nodes,
        jobs=jobs or [],
        pod_outcomes={**pod_outcomes, **(candidates or {})},
        other_policies=[],
    )


def agent_message(status: str) -> str:
    return json.dumps(
        {
            "policy": POLICY,
            "status": status,
            "mode": "Enforce",
            "checkedAt": "2026-11-25T12:00:00Z",
            # A sysctl written: only then does a remediation restart workloads (issue 12).
            "actions": ["wrote net.ipv4.ip_local_port_range = 32768 60999 (was 1024 65000)"],
        }
    )


def finished_job(
    node: str, *, succeeded: bool = True, reason: str = "", name: str = "", **fields: Any
) -> JobFacts:
    """A finished Job of the policy (its controller owner) for `node`; its uid is
    `uid-<name>`."""
    name = name or f"job-{node}"
    facts = JobFacts(
        name,
        POLICY,
        node,
        spec_hash(parse_spec(SPEC)),
        "boot-1",
        NOW,
        finished=True,
        succeeded=succeeded,
        failure_reason=reason,
        uid=f"uid-{name}",
        owner_uid=POLICY_UID,
    )
    return dataclasses.replace(facts, **fields)


def pod_outcome(
    job: str,
    exit_code: int,
    message: str,
    reason: str,
    *,
    node: str = "n1",
    owner_uid: str | None = None,
    pod: str = "",
) -> PodOutcome:
    """The outcome of an agent pod that claims to be `job`'s: by default the Job's own (its
    controller ownerReference is the Job's uid, as `finished_job` makes it), on `node`."""
    return PodOutcome(
        job,
        exit_code,
        message,
        reason,
        pod=pod or f"{job}-pod",
        owner_uid=f"uid-{job}" if owner_uid is None else owner_uid,
        node=node,
    )


def test_first_pass_creates_jobs_and_reports_progress() -> None:
    kube = RecordingKube()
    result = reconciler(kube).run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    assert [j["metadata"]["annotations"]["nodesysctl.io/node"] for j in kube.jobs_created] == ["n1"]
    conditions = {c["type"]: c["status"] for c in kube.status_patches[-1]["conditions"]}
    assert conditions["Progressing"] == "True"
    assert kube.status_patches[-1]["observedGeneration"] == 2
    assert result.delay <= 5


def test_invalid_spec_reports_once_and_creates_nothing() -> None:
    kube = RecordingKube()
    bad = {"ports": {"ephemeralRange": {"min": 40000, "max": 30000}}}
    reconciler(kube).run_once(snapshot([NodeFacts("n1", {}, "b", {})], spec=bad), NOW)
    assert kube.jobs_created == []
    assert kube.events == [("NodeSysctlPolicy", POLICY, "InvalidSpec")]
    invalid = next(c for c in kube.status_patches[0]["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True"
    assert "ephemeralRange" in invalid["message"]
    # Same generation again: the status already says so, nothing is written twice.
    again = RecordingKube()
    reconciler(again).run_once(
        snapshot([NodeFacts("n1", {}, "b", {})], spec=bad, status=kube.status_patches[0]), NOW
    )
    assert again.status_patches == []
    assert again.events == []


@pytest.mark.parametrize(
    ("job", "refused"),
    [
        ({"image": "evil.example/rootkit:latest"}, 'spec.job.image: "evil.example/rootkit:latest"'),
        ({"priorityClassName": "system-node-critical"}, "spec.job.priorityClassName"),
    ],
)
def test_an_image_or_priority_class_the_operator_does_not_allow_is_invalid_and_runs_nothing(
    job: dict[str, Any], refused: str
) -> None:
    kube = RecordingKube()
    spec = {**SPEC, "job": job}
    result = reconciler(kube).run_once(snapshot([NodeFacts("n1", {}, "b", {})], spec=spec), NOW)
    assert kube.jobs_created == []
    assert kube.events == [("NodeSysctlPolicy", POLICY, "InvalidSpec")]
    invalid = next(c for c in kube.status_patches[0]["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True"
    assert refused in invalid["message"]
    assert "is not in the operator's --allowed-" in invalid["message"]
    # It waits for an edit (or an operator with another configuration), not for a retry.
    assert result.delay == INVALID_POLL_SECONDS
    again = RecordingKube()
    reconciler(again).run_once(
        snapshot([NodeFacts("n1", {}, "b", {})], spec=spec, status=kube.status_patches[0]), NOW
    )
    assert again.jobs_created == []
    assert again.events == []


def test_an_allowed_image_and_priority_class_run() -> None:
    kube = RecordingKube()
    settings = JobSettings(
        namespace="jobs",
        allowed_images=("registry.example/agent@sha256:" + "b" * 64,),
        allowed_priority_classes=("nodesysctl-agent",),
    )
    job = {"image": settings.allowed_images[0], "priorityClassName": "nodesysctl-agent"}
    PolicyReconciler(kube, settings, RestartLimiter(600, 10)).run_once(
        snapshot([NodeFacts("n1", {}, "b", {})], spec={**SPEC, "job": job}), NOW
    )
    [created] = kube.jobs_created
    pod = created["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == settings.allowed_images[0]
    assert pod["priorityClassName"] == "nodesysctl-agent"


def test_finished_job_is_recorded_on_the_node_with_events() -> None:
    kube = RecordingKube()
    outcome = pod_outcome("job-n1", 0, agent_message("Remediated"), "Completed")
    result = reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": outcome},
        ),
        NOW,
    )
    node, patch = kube.node_patches[0]
    stored = NodeResult.from_annotation(
        patch["metadata"]["annotations"][ANNOTATION_RESULT_PREFIX + POLICY]
    )
    assert node == "n1"
    assert stored is not None
    assert stored.status == NodeState.REMEDIATED
    assert stored.restart_pending is True
    assert ("Node", "n1", "Remediated") in kube.events
    # No workload had pods there, so the (empty) restart wave completed in the same pass.
    assert result.recorded["n1"].status == NodeState.REMEDIATED
    assert result.recorded["n1"].restart_pending is False
    assert kube.jobs_created == []  # the recorded result counts: no second check


@pytest.mark.parametrize(
    ("outcome", "reason", "expected"),
    [
        (
            None,
            "DeadlineExceeded: Job was active longer than specified deadline",
            "DeadlineExceeded",
        ),
        (pod_outcome("job-n1", 1, "garbage{", "Error"), "", "unreadable agent result"),
    ],
)
def test_job_without_a_readable_result_is_a_failed_node(
    outcome: PodOutcome | None, reason: str, expected: str
) -> None:
    kube = RecordingKube()
    reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})],
            jobs=[finished_job("n1", succeeded=False, reason=reason)],
            outcomes={"job-n1": outcome} if outcome else {},
        ),
        NOW,
    )
    stored = NodeResult.from_annotation(
        kube.node_patches[0][1]["metadata"]["annotations"][ANNOTATION_RESULT_PREFIX + POLICY]
    )
    assert stored is not None
    assert stored.status == NodeState.FAILED
    assert expected in stored.message
    # maxFailedNodes=1: the rollout halts; n2 is not checked, Degraded + an Event say why.
    assert kube.jobs_created == []
    assert ("NodeSysctlPolicy", POLICY, "RolloutHalted") in kube.events
    degraded = next(c for c in kube.status_patches[-1]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"


def remediated(node: str, restart: bool = True) -> NodeFacts:
    result = NodeResult(
        NodeState.REMEDIATED,
        spec_hash(parse_spec(SPEC)),
        "boot-1",
        NOW - timedelta(minutes=1),
        f"job-{node}",
        "fixed",
        restart,
    )
    return NodeFacts(node, {}, "boot-1", {POLICY: result})


def deployment(
    name: str, *, paused: bool = False, wave: str = "", kind: str = "Deployment", **labels: str
) -> dict[str, Any]:
    annotations = {RESTART_WAVE: wave} if wave else {}
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "apps",
            "uid": f"uid-{name}",
            "labels": labels or {"restart": "yes"},
        },
        "spec": {"paused": paused, "template": {"metadata": {"annotations": annotations}}},
    }


def replica_set(deployment: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{deployment}-rs",
            "namespace": "apps",
            "uid": f"uid-{deployment}-rs",
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                 "uid": f"uid-{deployment}", "controller": True}
            ],
        }
    }  # fmt: skip


def pod(
    owner: str, node: str = "n1", *, kind: str = "ReplicaSet", host: bool = True, name: str = ""
) -> dict[str, Any]:
    """A pod of Deployment `owner` (through its ReplicaSet), or of DaemonSet `owner`, started an
    hour before the remediation."""
    owner_name = f"{owner}-rs" if kind == "ReplicaSet" else owner
    name = name or f"{owner}-{node}"
    return {
        "metadata": {
            "name": name,
            "namespace": "apps",
            "uid": f"uid-{name}",
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": owner_name,
                 "uid": f"uid-{owner_name}", "controller": True}
            ],
        },
        "spec": {"nodeName": node, "hostNetwork": host},
        "status": {"phase": "Running", "startTime": "2026-11-25T10:00:00Z"},
    }  # fmt: skip


def test_remembered_results_equal_what_the_node_annotation_reads_back() -> None:
    """The operator overlays results it wrote until the watch echoes them; they must compare
    equal to the echo (seconds, cut messages) or the overlay would never be dropped."""
    kube = RecordingKube()
    long_message = json.dumps(
        {
            "policy": POLICY,
            "status": "Failed",
            "mode": "Enforce",
            "checkedAt": "2026-11-25T12:00:00Z",
            "errors": ["x" * 290] * 3,
        }
    )
    outcome = pod_outcome("job-n1", 1, long_message, "Error")
    moment = NOW.replace(microsecond=123456)
    result = reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": outcome},
        ),
        moment,
    )
    last_patch = kube.node_patches[-1][1]["metadata"]["annotations"][
        ANNOTATION_RESULT_PREFIX + POLICY
    ]
    assert result.recorded["n1"] == NodeResult.from_annotation(last_patch)


def test_restart_once_per_wave_skipping_paused_and_unaffected() -> None:
    kube = RecordingKube(
        workloads=[
            deployment("web"),
            deployment("frozen", paused=True),
            deployment("elsewhere"),
            deployment("pod-network"),
        ],
        pods=[pod("web"), pod("frozen"), pod("elsewhere", "n3"), pod("pod-network", host=False)],
    )
    result = reconciler(kube).run_once(snapshot([remediated("n1"), remediated("n2", False)]), NOW)
    assert [(kind, name) for kind, name, _ in kube.workload_patches] == [("Deployment", "web")]
    assert ("Deployment", "frozen", "RestartSkipped") in kube.events
    last = kube.status_patches[-1]["lastRestart"]
    assert last["workloads"] == ["Deployment/apps/web"]
    assert last["notRestarted"][0]["workload"] == "Deployment/apps/frozen"
    # One LIST of host-network pods, one of ReplicaSets, a GET of each affected workload only.
    assert kube.lists == ["pods", "replicasets"]
    assert sorted(kube.reads) == ["Deployment/apps/frozen", "Deployment/apps/web"]
    # The wave is done: n1's restart flag is cleared on the node, the status has no open wave,
    # and the policy's Event says why pod-network pods were left alone.
    assert result.recorded["n1"].restart_pending is False
    assert kube.status_patches[-1]["restartWave"] is None
    [summary] = event_messages(kube, "NodeSysctlPolicy", "RestartWaveComplete")
    assert "a pod with its own network namespace never had the node's" in summary

    # A restarted operator that sees the same wave skips the workload it already stamped.
    wave = kube.workload_patches[0][2]["spec"]["template"]["metadata"]["annotations"][RESTART_WAVE]
    again = RecordingKube(workloads=[deployment("web", wave=wave)], pods=[pod("web")])
    reconciler(again).run_once(snapshot([remediated("n1")]), NOW)
    assert again.workload_patches == []


def test_pods_all_restarts_pod_network_workloads_too() -> None:
    spec = {**SPEC, "restart": {**SPEC["restart"], "pods": "All"}}
    kube = RecordingKube(
        workloads=[deployment("pod-network")], pods=[pod("pod-network", host=False)]
    )
    reconciler(kube).run_once(snapshot([remediated("n1")], spec=spec), NOW)
    assert [name for _, name, _ in kube.workload_patches] == ["pod-network"]


def test_a_daemonset_is_evicted_on_the_remediated_node_only_never_rolled() -> None:
    spec = {**SPEC, "restart": {**SPEC["restart"], "kinds": ["DaemonSet"]}}
    kube = RecordingKube(
        workloads=[deployment("agent", kind="DaemonSet")],
        pods=[pod("agent", "n1", kind="DaemonSet"), pod("agent", "n2", kind="DaemonSet")],
    )
    reconciler(kube).run_once(snapshot([remediated("n1"), remediated("n2", False)], spec=spec), NOW)
    assert kube.evictions == ["agent-n1"]
    assert kube.workload_patches == []
    assert kube.lists == ["pods"]  # no ReplicaSet owns an affected pod: not listed
    assert ("DaemonSet", "agent", "Evicted") in kube.events
    assert kube.status_patches[-1]["lastRestart"]["evicted"] == 1


def test_a_refused_eviction_is_retried_then_reported_and_the_wave_completes_without_it() -> None:
    spec = {**SPEC, "restart": {**SPEC["restart"], "kinds": ["Deployment", "DaemonSet"]}}
    kube = RecordingKube(
        workloads=[deployment("web"), deployment("guarded", kind="DaemonSet")],
        pods=[pod("web"), pod("guarded", kind="DaemonSet")],
    )
    kube.refuse_evictions.add("guarded-n1")
    pdb = reconciler(kube)
    moment = NOW
    first = pdb.run_once(snapshot([remediated("n1")], spec=spec), moment)
    assert [name for _, name, _ in kube.workload_patches] == ["web"]
    assert "n1" not in first.recorded  # the wave waits for the retry
    assert first.delay == 10.0
    wave = kube.status_patches[-1]["restartWave"]
    assert (wave["remaining"], wave["steps"][0]["workload"]) == (1, "DaemonSet/apps/guarded")
    result = first
    for _ in range(6):
        moment += timedelta(seconds=10)
        status = kube.status_patches[-1]
        result = pdb.run_once(snapshot([remediated("n1")], spec=spec, status=status), moment)
        if "n1" in result.recorded:
            break
    assert kube.evictions == ["guarded-n1"] * 5
    assert kube.lists == ["pods", "replicasets"]  # the plan was kept: listed once for the wave
    assert [name for _, name, _ in kube.workload_patches] == ["web"]  # restarted once
    assert result.recorded["n1"].restart_pending is False
    assert ("DaemonSet", "guarded", "EvictionBlocked") in kube.events
    [blocked] = event_messages(kube, "NodeSysctlPolicy", "EvictionBlocked")
    assert "eviction refused 5 times (Cannot evict pod as it would violate the budget.)" in blocked
    last = kube.status_patches[-1]["lastRestart"]
    assert last["notRestarted"][0]["action"] == "EvictionBlocked"


def test_the_policy_budget_is_spent_in_the_status_before_the_restarts() -> None:
    """maxPerHour 2: two restarts, the budget written first; a new operator (nothing in memory)
    reading that status restarts nothing more this hour."""
    spec = {**SPEC, "restart": {**SPEC["restart"], "maxPerHour": 2}}
    workloads = [deployment(name) for name in ("a", "b", "c")]
    pods = [pod(name) for name in ("a", "b", "c")]
    kube = RecordingKube(workloads=workloads, pods=pods)
    result = reconciler(kube).run_once(snapshot([remediated("n1")], spec=spec), NOW)
    assert kube.status_writes[:3] == [("status", "0"), ("workload", "a"), ("workload", "b")]
    assert "n1" not in result.recorded
    # Waits for the budget (an hour / 2 per hour = 30 min), at most the idle poll.
    assert result.delay == 300.0
    status = kube.status_patches[-1]
    assert status["restartBudget"]["remaining"] == 0
    assert status["restartWave"]["remaining"] == 1

    restarted = RecordingKube(workloads=workloads, pods=pods)
    later = NOW + timedelta(minutes=5)
    reconciler(restarted).run_once(snapshot([remediated("n1")], spec=spec, status=status), later)
    assert restarted.workload_patches == []  # the budget in the status is spent
    assert restarted.status_patches[-1]["restartWave"]["remaining"] == 3


def test_report_mode_plans_and_reports_the_wave_and_restarts_nothing() -> None:
    spec = {**SPEC, "restart": {**SPEC["restart"], "mode": "Report"}}
    kube = RecordingKube(workloads=[deployment("web")], pods=[pod("web")])
    result = reconciler(kube).run_once(snapshot([remediated("n1")], spec=spec), NOW)
    assert kube.workload_patches == []
    assert kube.evictions == []
    status = kube.status_patches[-1]
    assert status["lastRestart"]["report"] is True
    assert status["lastRestart"]["workloads"] == ["Deployment/apps/web"]
    assert status["restartWave"]["mode"] == "Report"
    assert status["restartWave"]["steps"] == [
        {
            "workload": "Deployment/apps/web",
            "action": "Restart",
            "reason": "rollout restart: hostNetwork pod on node n1 started before the fix",
        }
    ]
    assert result.recorded["n1"].restart_pending is False
    [report] = event_messages(kube, "NodeSysctlPolicy", "RestartReport")
    assert report.startswith("restart wave ")
    assert "would restart 1 workloads" in report
    # The report stays in the status on the next passes (no wave then): nothing to write.
    again = RecordingKube(workloads=[deployment("web")], pods=[pod("web")])
    node = remediated("n1", restart=False)
    reconciler(again).run_once(snapshot([node], spec=spec, status=status), NOW)
    assert again.status_patches == []
    assert again.lists == []


def test_restart_rate_limit_defers_the_rest_of_the_wave() -> None:
    kube = RecordingKube(workloads=[deployment("a"), deployment("b")], pods=[pod("a"), pod("b")])
    result = reconciler(kube, per_minute=0.001, burst=1).run_once(snapshot([remediated("n1")]), NOW)
    assert len(kube.workload_patches) == 1
    assert "n1" not in result.recorded  # still pending: the next pass continues the wave


def test_restarts_wait_until_the_rollout_is_quiet() -> None:
    kube = RecordingKube(workloads=[deployment("web")], pods=[pod("web")])
    reconciler(kube).run_once(snapshot([remediated("n1"), NodeFacts("n2", {}, "boot-1", {})]), NOW)
    assert kube.jobs_created  # n2 still has to be checked
    assert kube.workload_patches == []


def test_unchanged_status_is_not_written_again() -> None:
    kube = RecordingKube()
    nodes = [remediated("n1", restart=False)]
    reconciler(kube).run_once(snapshot(nodes), NOW)
    written = kube.status_patches[-1]
    again = RecordingKube()
    reconciler(again).run_once(snapshot(nodes, status=written), NOW + timedelta(seconds=30))
    assert again.status_patches == []
    assert again.jobs_created == []


def test_a_superseded_finished_job_is_not_recorded_again() -> None:
    """A node checked, rebooted and checked again within the Jobs' TTL has two finished Jobs.
    Only the newest counts: re-recording the older one (stale boot ID) asked for a new check and
    a new restart wave on every pass until the TTL removed it."""
    before = finished_job("n1", name="job-a", created_at=NOW - timedelta(minutes=3))
    after = finished_job(
        "n1", name="job-b", boot_id="boot-2", created_at=NOW - timedelta(minutes=1)
    )
    current = spec_hash(parse_spec(SPEC))
    stored = NodeResult(NodeState.REMEDIATED, current, "boot-2", NOW, "job-b", "fixed")
    outcomes = {
        job: pod_outcome(job, 0, agent_message("Remediated"), "Completed")
        for job in ("job-a", "job-b")
    }
    node = NodeFacts("n1", {}, "boot-2", {POLICY: stored})
    kube = RecordingKube()
    reconciler(kube).run_once(snapshot([node], jobs=[after, before], outcomes=outcomes), NOW)
    assert kube.node_patches == []
    assert kube.jobs_created == []
    # Neither recorded yet (an operator restart): the newest is (and only the newest).
    fresh = RecordingKube()
    unrecorded = NodeFacts("n1", {}, "boot-2", {})
    reconciler(fresh).run_once(snapshot([unrecorded], jobs=[after, before], outcomes=outcomes), NOW)
    key = f"nodesysctl.io/result.{POLICY}"
    first = fresh.node_patches[0][1]["metadata"]["annotations"][key]
    assert json.loads(first)["job"] == "job-b"
    assert all("job-a" not in json.dumps(patch) for _, patch in fresh.node_patches)


def test_a_rate_limited_wave_resumes_when_the_next_token_is_due() -> None:
    """Workloads are not watched, so nothing else wakes the daemon for the rest of the wave:
    the pass itself asks to run again when the limiter has a token (here 60/6 = 10 s), not
    after the idle poll (minutes)."""
    kube = RecordingKube(workloads=[deployment("a"), deployment("b")], pods=[pod("a"), pod("b")])
    result = reconciler(kube, per_minute=6, burst=1).run_once(snapshot([remediated("n1")]), NOW)
    assert len(kube.workload_patches) == 1
    assert 1.0 <= result.delay <= 10.0


# --- Verify before believing -------------------------------------------------------------------


def stored_result(kube: RecordingKube, node: str = "n1") -> NodeResult:
    """The last result the pass wrote onto `node`."""
    patches = [patch for name, patch in kube.node_patches if name == node]
    stored = NodeResult.from_annotation(
        patches[-1]["metadata"]["annotations"][ANNOTATION_RESULT_PREFIX + POLICY]
    )
    assert stored is not None
    return stored


def event_messages(kube: RecordingKube, kind: str, reason: str) -> list[str]:
    return [
        message
        for (involved, _, why), message in zip(kube.events, kube.event_messages, strict=True)
        if (involved, why) == (kind, reason)
    ]


def test_a_forged_compliant_result_is_not_recorded_and_is_reported() -> None:
    """A pod with the Job's job-name label but not the Job's own (a bare pod, no controller
    reference): the only outcome under the name of a Job that never ran its pod."""
    forged = pod_outcome("job-n1", 0, agent_message("Compliant"), "Completed", owner_uid="")
    failed_job = finished_job("n1", succeeded=False, reason="DeadlineExceeded: too long")
    kube = RecordingKube()
    result = reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})], jobs=[failed_job], outcomes={"job-n1": forged}
        ),
        NOW,
    )
    stored = stored_result(kube)
    assert stored.status == NodeState.FAILED
    assert stored.message.startswith(
        "the agent result came from pod job-n1-pod, which is not owned by Job job-n1"
    )
    assert result.recorded["n1"] == stored
    assert ("Node", "n1", "UntrustedResult") in kube.events
    assert ("NodeSysctlPolicy", POLICY, "UntrustedResult") in kube.events
    assert ("Node", "n1", "CheckFailed") not in kube.events  # reported once, by its own reason


def test_a_forged_result_beside_the_jobs_own_does_not_shadow_it() -> None:
    own = pod_outcome("job-n1", 0, agent_message("Remediated"), "Completed")
    forged = [
        pod_outcome("job-n1", 0, agent_message("Compliant"), "Completed", pod=f"forged-{n}", **f)
        for n, f in enumerate([{"owner_uid": ""}, {"node": "elsewhere"}])
    ]
    for order in ([*forged, own], [own, *forged]):
        kube = RecordingKube()
        reconciler(kube).run_once(
            snapshot(
                [NodeFacts("n1", {}, "boot-1", {})],
                jobs=[finished_job("n1")],
                candidates={"job-n1": order},
            ),
            NOW,
        )
        assert stored_result(kube).status == NodeState.REMEDIATED
        untrusted = event_messages(kube, "Node", "UntrustedResult")
        assert len(untrusted) == 2
        assert "forged-0, which is not owned by Job job-n1" in untrusted[0]
        assert "forged-1, which ran on node elsewhere, not n1" in untrusted[1]


def test_the_jobs_own_pod_is_fetched_when_the_watch_has_only_a_forged_one() -> None:
    forged = pod_outcome("job-n1", 0, agent_message("Compliant"), "Completed", owner_uid="")
    own_body = {
        "metadata": {
            "name": "job-n1-own",
            "labels": {"batch.kubernetes.io/job-name": "job-n1"},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "uid": "uid-job-n1", "controller": True}
            ],
        },
        "spec": {"nodeName": "n1"},
        "status": {
            "containerStatuses": [
                {
                    "name": "agent",
                    "state": {"terminated": {"exitCode": 0, "message": agent_message("Drifted")}},
                }
            ]
        },
    }
    kube = RecordingKube(job_pods={"job-n1": [own_body]})
    reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": forged},
        ),
        NOW,
    )
    assert stored_result(kube).status == NodeState.DRIFTED
    assert ("Node", "n1", "UntrustedResult") in kube.events


def test_a_finished_foreign_job_is_failed_once_never_compliant() -> None:
    """A Job with the policy's label and the node's annotation that the policy does not control
    (made by hand, or left by a deleted policy of the same name), with its own pod saying
    Compliant: Failed, ForeignJob; and the next pass, which sees the result, writes nothing."""
    foreign = finished_job("n1", owner_uid="uid-of-an-older-policy")
    own_pod = pod_outcome("job-n1", 0, agent_message("Compliant"), "Completed")
    kube = RecordingKube()
    first = reconciler(kube).run_once(
        snapshot([NodeFacts("n1", {}, "boot-1", {})], jobs=[foreign], outcomes={"job-n1": own_pod}),
        NOW,
    )
    stored = stored_result(kube)
    assert stored.status == NodeState.FAILED
    assert "Job job-n1 claims to check node n1" in stored.message
    assert ("NodeSysctlPolicy", POLICY, "ForeignJob") in kube.events
    assert ("Node", "n1", "ForeignJob") in kube.events

    again = RecordingKube()
    node = NodeFacts("n1", {}, "boot-1", {POLICY: first.recorded["n1"]})
    reconciler(again).run_once(
        snapshot(
            [node], jobs=[foreign], outcomes={"job-n1": own_pod}, status=kube.status_patches[-1]
        ),
        NOW + timedelta(seconds=30),
    )
    assert again.node_patches == []
    assert [e for e in again.events if e[2] == "ForeignJob"] == []
    assert again.jobs_created == []  # Failed for this spec and boot: not retried until recheck


def test_a_running_foreign_job_neither_holds_the_check_back_nor_is_deleted() -> None:
    spec = {**SPEC, "rollout": {"maxConcurrent": 1, "maxFailedNodes": 1}}
    foreign = dataclasses.replace(finished_job("n1", owner_uid=""), finished=False)
    stale_foreign = dataclasses.replace(foreign, name="job-old", spec_hash="old-spec")
    kube = RecordingKube()
    reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})],
            spec=spec,
            jobs=[foreign, stale_foreign],
        ),
        NOW,
    )
    # maxConcurrent=1 and a "running" check on n1, were it believed: nothing would start.
    assert [j["metadata"]["annotations"]["nodesysctl.io/node"] for j in kube.jobs_created] == ["n1"]
    assert kube.jobs_deleted == []  # not ours to delete, even when it looks stale


def existing_job(owner_uid: str | None) -> tuple[str, dict[str, Any]]:
    """The Job the pass would create for n1 (name, body) as the API server would return it,
    owned by `owner_uid` (None: no ownerReferences at all)."""
    probe = RecordingKube()
    reconciler(probe).run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    body = json.loads(json.dumps(probe.jobs_created[0]))
    body["metadata"]["uid"] = "uid-existing"
    if owner_uid is None:
        del body["metadata"]["ownerReferences"]
    else:
        body["metadata"]["ownerReferences"][0]["uid"] = owner_uid
    return body["metadata"]["name"], body


def test_409_with_our_own_job_carries_on_as_before() -> None:
    name, body = existing_job(POLICY_UID)
    kube = RecordingKube(existing_jobs={name: body})
    result = reconciler(kube).run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    assert kube.jobs_read == [name]
    assert kube.node_patches == []
    assert kube.events == []
    assert result.recorded == {}
    conditions = {c["type"]: c["status"] for c in kube.status_patches[-1]["conditions"]}
    assert conditions["Progressing"] == "True"


@pytest.mark.parametrize("owner_uid", [None, "uid-of-an-older-policy"])
def test_409_with_a_foreign_job_fails_the_node_and_reports_it_once(owner_uid: str | None) -> None:
    name, body = existing_job(owner_uid)
    kube = RecordingKube(existing_jobs={name: body})
    result = reconciler(kube).run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    stored = stored_result(kube)
    assert stored.status == NodeState.FAILED
    assert stored.job == name
    assert stored.message == (
        f"a Job named {name} that nodesysctl did not create for this node exists in jobs"
    )
    assert ("Node", "n1", "ForeignJob") in kube.events
    assert ("NodeSysctlPolicy", POLICY, "ForeignJob") in kube.events
    assert result.recorded["n1"] == stored

    # The next pass sees the Failed result (written through): no second POST, no second report.
    again = RecordingKube(existing_jobs={name: body})
    node = NodeFacts("n1", {}, "boot-1", {POLICY: result.recorded["n1"]})
    reconciler(again).run_once(snapshot([node], status=kube.status_patches[-1]), NOW)
    assert (again.jobs_read, again.node_patches) == ([], [])
    assert [e for e in again.events if e[2] == "ForeignJob"] == []


def test_409_for_a_job_gone_meanwhile_records_nothing() -> None:
    name, _ = existing_job(POLICY_UID)

    class Vanishing(RecordingKube):
        def create_job(self, body: Mapping[str, Any]) -> bool:
            return False  # 409, and the Job is deleted before the GET: 404

    vanishing = Vanishing()
    result = reconciler(vanishing).run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    assert vanishing.jobs_read == [name]
    assert (vanishing.node_patches, result.recorded) == ([], {})


def test_a_compliant_node_with_sockets_in_reserved_ports_gets_its_own_warning() -> None:
    # Compliant results raise no Event of their own; what the agent surfaced still does.
    message = json.dumps(
        {
            "policy": POLICY,
            "status": "Compliant",
            "mode": "Enforce",
            "checkedAt": "2026-11-25T12:00:00Z",
            "conflictingSockets": [
                {
                    "proto": "tcp",
                    "localAddress": "10.0.0.5",
                    "port": 30123,
                    "state": "ESTABLISHED",
                    "kind": "EphemeralUse",
                    "remoteAddress": "10.96.0.1",
                    "remotePort": 443,
                }
            ],
            "conflictingSocketCount": 1,
            "bootOverrides": [
                {"file": "/etc/sysctl.d/zzz.conf", "key": "net.ipv4.ip_local_port_range"}
            ],
        }
    )
    kube = RecordingKube()
    reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": pod_outcome("job-n1", 0, message, "Completed")},
        ),
        NOW,
    )
    for reason in ("PersistOverridden", "SocketsInReservedPorts"):
        assert ("Node", "n1", reason) in kube.events
        assert ("NodeSysctlPolicy", POLICY, reason) in kube.events
    assert not any(reason in ("Remediated", "DriftDetected") for *_, reason in kube.events)
    # From a pod that is not the Job's own, nothing is announced but the refusal.
    forged = RecordingKube()
    reconciler(forged).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": pod_outcome("job-n1", 0, message, "Completed", owner_uid="x")},
        ),
        NOW,
    )
    assert not any(r in ("PersistOverridden", "SocketsInReservedPorts") for *_, r in forged.events)


# --- policies compose; one agent Job per node (issue 12) --------------------------------------


def other(name: str, created: str, **spec: Any) -> PolicyRanges:
    return PolicyRanges(name, created, parse_spec(spec))


def agent_spec(job: Mapping[str, Any]) -> AgentSpec:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))


NARROW = {"ports": {"ephemeralRange": {"min": 40000, "max": 50000}}}
OLDER = "2026-10-01T00:00:00Z"  # before the snapshot policy's 2026-11-01


def test_a_check_applies_the_composition_of_every_enforce_policy_on_the_node() -> None:
    kube = RecordingKube()
    snap = dataclasses.replace(
        snapshot([NodeFacts("n1", {}, "boot-1", {})], spec={**SPEC, **NARROW}),
        other_policies=[other("wide", OLDER)],
    )
    reconciler(kube).run_once(snap, NOW)
    [job] = kube.jobs_created
    spec = agent_spec(job)
    assert spec.policies == ["wide", POLICY]
    assert (spec.ephemeral.lo, spec.ephemeral.hi) == (40000, 50000)
    # The check's hash is the node's composition's, not the policy's own: it changes (and
    # the node is rechecked) when "wide" changes.
    own = spec_hash(parse_spec({**SPEC, **NARROW}))
    assert job["metadata"]["labels"][LABEL_SPEC_HASH] != own
    conditions = {c["type"]: c["status"] for c in kube.status_patches[-1]["conditions"]}
    assert conditions["Conflict"] == "False"


def test_a_policy_that_cannot_compose_skips_the_node_and_both_sides_report_it() -> None:
    disjoint = {**SPEC, "ports": {"ephemeralRange": {"min": 20000, "max": 29999}}}
    loser = RecordingKube()
    snap = dataclasses.replace(
        snapshot([NodeFacts("n1", {}, "boot-1", {})], spec=disjoint),
        other_policies=[other("wide", OLDER)],
    )
    reconciler(loser).run_once(snap, NOW)
    assert loser.jobs_created == []
    conflict = next(c for c in loser.status_patches[-1]["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True"
    assert f"node n1: wide takes precedence over {POLICY}" in conflict["message"]
    assert ("NodeSysctlPolicy", POLICY, "PolicyConflict") in loser.events
    assert loser.status_patches[-1]["nodes"] == 0

    # The winner's side: its composition on n1 is unchanged (its own check is current), and
    # it reports the conflict too.
    current = NodeResult(
        NodeState.COMPLIANT, spec_hash(parse_spec(SPEC)), "boot-1", NOW, "job-n1", "ok"
    )
    winner = RecordingKube()
    snap = dataclasses.replace(
        snapshot([NodeFacts("n1", {}, "boot-1", {POLICY: current})]),
        other_policies=[other("younger", "2026-12-01T00:00:00Z", **disjoint)],
    )
    reconciler(winner).run_once(snap, NOW)
    assert winner.jobs_created == []
    conflict = next(c for c in winner.status_patches[-1]["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True"
    assert f"node n1: {POLICY} takes precedence over younger" in conflict["message"]


def test_a_node_another_policys_job_occupies_waits_and_the_pass_polls() -> None:
    kube = RecordingKube()
    snap = dataclasses.replace(
        snapshot([NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})]),
        busy=frozenset({"n1"}),
    )
    result = reconciler(kube).run_once(snap, NOW)
    assert [j["metadata"]["annotations"]["nodesysctl.io/node"] for j in kube.jobs_created] == ["n2"]
    assert result.queued == {"n1"}
    assert result.delay <= 5


class RefusingClaims:
    """Claims another policy's pass has taken for `taken` since the snapshot."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.released: list[tuple[str, str]] = []

    def claim(self, node: str, policy: str, job: str) -> bool:
        return node not in self.taken

    def release(self, node: str, job: str) -> None:
        self.released.append((node, job))


def test_a_node_claimed_meanwhile_by_another_pass_is_not_checked_now() -> None:
    kube = RecordingKube()
    claims = RefusingClaims({"n1"})
    pass_ = PolicyReconciler(
        kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10), claims=claims
    )
    result = pass_.run_once(
        snapshot([NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})]), NOW
    )
    assert [j["metadata"]["annotations"]["nodesysctl.io/node"] for j in kube.jobs_created] == ["n2"]
    assert result.queued == {"n1"}
    assert claims.released == []


def test_a_foreign_job_holding_the_name_gives_the_claim_back() -> None:
    name, body = existing_job("uid-of-an-older-policy")
    kube = RecordingKube(existing_jobs={name: body})
    claims = RefusingClaims(set())
    pass_ = PolicyReconciler(
        kube, JobSettings(namespace="jobs"), RestartLimiter(600, 10), claims=claims
    )
    pass_.run_once(snapshot([NodeFacts("n1", {}, "boot-1", {})]), NOW)
    assert claims.released == [("n1", name)]


def test_results_remember_the_directory_persisted_and_checks_clean_the_earlier_ones() -> None:
    kube = RecordingKube()
    outcome = pod_outcome("job-n1", 0, agent_message("Remediated"), "Completed")
    result = reconciler(kube).run_once(
        snapshot(
            [NodeFacts("n1", {}, "boot-1", {})],
            jobs=[finished_job("n1")],
            outcomes={"job-n1": outcome},
        ),
        NOW,
    )
    assert result.recorded["n1"].sysctl_dirs == ("/etc/sysctl.d",)

    # The policy moved to /usr/local/lib/sysctl.d: its check there cleans /etc/sysctl.d.
    moved = {**SPEC, "remediation": {"sysctlDir": "/usr/local/lib/sysctl.d"}}
    again = RecordingKube()
    node = NodeFacts("n1", {}, "boot-1", {POLICY: result.recorded["n1"]})
    reconciler(again).run_once(snapshot([node], spec=moved), NOW)
    args = again.jobs_created[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--sysctl-dir") + 1] == "/host/usr/local/lib/sysctl.d"
    assert args[args.index("--clean-dir") + 1] == "/host/etc/sysctl.d"


def test_a_policy_the_operator_does_not_admit_takes_no_part_in_a_composition() -> None:
    # Its own passes report it Invalid; its values must not reach the node through another's.
    kube = RecordingKube()
    refused = other("pinned", OLDER, job={"image": "registry.example/other:1"}, **NARROW)
    snap = dataclasses.replace(
        snapshot([NodeFacts("n1", {}, "boot-1", {})]), other_policies=[refused]
    )
    reconciler(kube).run_once(snap, NOW)
    [job] = kube.jobs_created
    spec = agent_spec(job)
    assert spec.policies == [POLICY]
    assert (spec.ephemeral.lo, spec.ephemeral.hi) == (32768, 60999)
