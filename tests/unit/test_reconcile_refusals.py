"""A pass meets refusals: the API server refusing an agent Job (Invalid, one POST, then none
until an edit), failing other calls (Degraded, the daemon's backoff, cleared by a good pass), and
the Job controller unable to create a check's pod (the node Failed, early).

The fake is `tests.unit.test_reconcile.RecordingKube` (checked by mypy against `PassClient`),
here with refusals scripted in; the errors are `KubeError`s as `nodesysctl.kube` raises them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from nodesysctl.api import parse_spec
from nodesysctl.backoff import Backoff
from nodesysctl.daemon import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, PolicyDaemon
from nodesysctl.kube import KubeError
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX
from nodesysctl.nodewatch import NodesListed
from nodesysctl.observed import PodOutcome
from nodesysctl.pacing import INVALID_POLL_SECONDS
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, spec_hash
from nodesysctl.reconcile import PolicyReconciler, Snapshot
from nodesysctl.state import OperatorState

from .test_reconcile import NOW, POLICY, POLICY_UID, SPEC, RecordingKube, reconciler, snapshot
from .test_refusals import BUSY_QUOTA, PSA, RBAC_DENIAL, VAP_DENIAL, failed_create

INVALID_TOLERATION = (
    'Job.batch "nsc-x" is invalid: spec.template.spec.tolerations[0].key: Invalid value: '
    '"bad key!": name part must consist of alphanumeric characters'
)
NODES = [NodeFacts(name, {}, "boot-1", {}) for name in ("n1", "n2", "n3")]


class RefusingKube(RecordingKube):
    """RecordingKube whose Job creates (and, if asked, status writes) are refused, and which
    counts every create it is sent and serves FailedCreate Events."""

    def __init__(
        self,
        refuse: KubeError | None = None,
        *,
        refuse_status: KubeError | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.refuse = refuse
        self.refuse_status = refuse_status
        self.failed_create = events or []
        self.posts: list[str] = []  # every Job create sent, admitted or not
        self.event_lists = 0
        self.lock = threading.Lock()

    def create_job(self, body: Mapping[str, Any]) -> bool:
        with self.lock:
            self.posts.append(body["metadata"]["name"])
        if self.refuse is not None:
            raise self.refuse
        return super().create_job(body)

    def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        if self.refuse_status is not None:
            raise self.refuse_status
        super().patch_policy_status(name, status)

    def job_events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        self.event_lists += 1
        return [e for e in self.failed_create if e["reason"] == reason]


def conditions(status: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


@pytest.mark.parametrize(
    "refusal",
    [
        KubeError(422, "Invalid", INVALID_TOLERATION),
        KubeError(403, "Forbidden", VAP_DENIAL),  # an admission policy naming the request
    ],
)
def test_a_job_refused_for_its_values_makes_the_policy_invalid_after_one_post(
    refusal: KubeError,
) -> None:
    kube = RefusingKube(refusal)
    passes = reconciler(kube)
    result = passes.run_once(snapshot(NODES), NOW)  # three checks planned
    assert len(kube.posts) == 1  # the first was refused: the other two were never sent
    assert kube.jobs_created == []
    assert result.delay == INVALID_POLL_SECONDS  # an edit wakes the daemon, nothing else is due
    (status,) = kube.status_patches
    invalid = conditions(status)["Invalid"]
    assert (invalid["status"], invalid["reason"]) == ("True", "JobRefused")
    assert invalid["message"] == (
        f"the API server refused agent Job {kube.posts[0]}: "
        f"{refusal.status} {refusal.reason}: {refusal.message}"
    )
    assert conditions(status)["Ready"]["status"] == "False"
    assert status["observedGeneration"] == 2
    assert kube.events == [("NodeSysctlPolicy", POLICY, "JobRefused")]

    # The next pass of the same generation sends nothing and writes nothing, whether it is
    # this process (it remembers) or a restarted one (the status says so).
    for again in (passes, reconciler(RefusingKube())):
        healthy = RefusingKube()
        again.kube = healthy
        again.run_once(snapshot(NODES, status=status), NOW + timedelta(minutes=5))
        assert (healthy.posts, healthy.status_patches, healthy.events) == ([], [], [])

    # The status write was lost: the refusal is not sent again, only the status rewritten.
    healthy = RefusingKube()
    passes.kube = healthy
    passes.run_once(snapshot(NODES), NOW + timedelta(minutes=6))
    assert healthy.posts == []
    assert conditions(healthy.status_patches[0])["Invalid"]["message"] == invalid["message"]

    # An edit (a new generation) tries again.
    fixed = RefusingKube()
    passes.kube = fixed
    edited = dataclasses.replace(snapshot(NODES, status=status), generation=3)
    passes.run_once(edited, NOW + timedelta(minutes=7))
    assert len(fixed.jobs_created) == 3
    assert conditions(fixed.status_patches[-1])["Invalid"]["status"] == "False"


def test_a_refusal_that_is_not_the_users_fault_fails_the_pass_degraded_once() -> None:
    kube = RefusingKube(KubeError(403, "Forbidden", RBAC_DENIAL))
    passes = reconciler(kube)
    with pytest.raises(KubeError) as raised:
        passes.run_once(snapshot(NODES), NOW)
    assert raised.value.status == 403  # the daemon sees the error and backs off
    assert len(kube.posts) == 1  # the first create failed: the others wait for the retry
    assert kube.jobs_created == []
    (status,) = kube.status_patches
    degraded = conditions(status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "APIRefused")
    assert degraded["message"] == f"403 Forbidden: {RBAC_DENIAL}; retrying with backoff"
    assert "Invalid" not in conditions(status)  # not the user's fault
    assert kube.events == [("NodeSysctlPolicy", POLICY, "APIRefused")]

    # Failing again: the same status is not rewritten, and no second Event.
    again = RefusingKube(KubeError(403, "Forbidden", RBAC_DENIAL))
    passes.kube = again
    with pytest.raises(KubeError):
        passes.run_once(snapshot(NODES, status=status), NOW + timedelta(seconds=5))
    assert (again.status_patches, again.events) == ([], [])

    # The RBAC is fixed: the next pass creates the Jobs and clears Degraded.
    healthy = RefusingKube()
    passes.kube = healthy
    passes.run_once(snapshot(NODES, status=status), NOW + timedelta(seconds=15))
    assert len(healthy.jobs_created) == 3
    cleared = conditions(healthy.status_patches[-1])["Degraded"]
    assert (cleared["status"], cleared["reason"]) == ("False", "WithinBudget")


def test_when_the_status_write_fails_too_the_passs_own_error_is_raised() -> None:
    down = KubeError(503, "ServiceUnavailable", "etcdserver: request timed out")
    kube = RefusingKube(down, refuse_status=KubeError(0, "Unreachable", "connection refused"))
    with pytest.raises(KubeError) as raised:
        reconciler(kube).run_once(snapshot(NODES), NOW)
    assert raised.value is down
    assert kube.status_patches == []


def test_failed_passes_back_off_in_the_daemon_and_the_good_pass_clears_degraded() -> None:
    """The real pass under the real daemon loop: 503s are retried after 5 s, then 10 s; a pass
    that succeeds resets the backoff and writes Degraded=False over the API error."""
    kube = RefusingKube(KubeError(503, "ServiceUnavailable", "etcdserver: leader changed"))
    passes = reconciler(kube)
    state = OperatorState()
    state.apply_node_update(NodesListed(NODES))
    body: dict[str, Any] = {"metadata": {"generation": 2}, "spec": SPEC, "status": {}}
    jobs: dict[str, list[JobFacts]] = {}
    pods: dict[str, list[PodOutcome]] = {}
    backoff = Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, random=lambda: 0.0)
    daemon = PolicyDaemon(state, passes, POLICY, "uid-1", body, jobs, pods, backoff=backoff)

    async def three_passes() -> list[float]:
        waits = []
        for _ in range(3):
            waits.append((await daemon.run_one_pass()).wait)
            if kube.status_patches:  # what the watch would show the next pass
                body["status"] = kube.status_patches[-1]
            if len(waits) == 2:
                kube.refuse = None  # the API server is back
        return waits

    waits = asyncio.run(three_passes())
    assert waits[:2] == [5.0, 10.0]
    assert waits[2] <= 5.0  # checks are running: the busy poll, not a backoff
    assert daemon.backoff.failures == 0
    assert [reason for _, _, reason in kube.events].count("APIRefused") == 1
    degraded = [conditions(patch)["Degraded"] for patch in kube.status_patches]
    assert [(c["status"], c["reason"]) for c in degraded] == [
        ("True", "APIRefused"),
        ("False", "WithinBudget"),
    ]


def podless(node: str, seconds: float, **change: Any) -> JobFacts:
    """A running check of the current spec (the policy's own Job, uid `uid-nsc-<node>`) whose
    Job was created `seconds` ago."""
    job = JobFacts(
        f"nsc-{node}", POLICY, node, spec_hash(parse_spec(SPEC)), "boot-1",
        NOW - timedelta(seconds=seconds), uid=f"uid-nsc-{node}", owner_uid=POLICY_UID,
    )  # fmt: skip
    return dataclasses.replace(job, **change)


def test_a_pod_the_cluster_refuses_fails_its_node_early_and_its_job_is_deleted() -> None:
    created = NOW - timedelta(seconds=20)
    kube = RefusingKube(events=[failed_create("nsc-n1", PSA, created + timedelta(seconds=1))])
    result = reconciler(kube).run_once(snapshot(NODES, jobs=[podless("n1", 20)]), NOW)
    assert kube.event_lists == 1
    ((node, patch),) = kube.node_patches
    stored = NodeResult.from_annotation(
        patch["metadata"]["annotations"][ANNOTATION_RESULT_PREFIX + POLICY]
    )
    assert node == "n1"
    assert stored is not None
    assert stored.status == NodeState.FAILED
    assert stored.message == f"pod creation refused: {PSA}"[:300]
    assert result.recorded["n1"] == stored
    assert kube.jobs_deleted == ["nsc-n1"]  # the Job controller stops retrying
    assert ("Node", "n1", "PodCreationRefused") in kube.events
    assert ("NodeSysctlPolicy", POLICY, "PodCreationRefused") in kube.events
    # It counts against maxFailedNodes (1 here): the rollout halts before n2 and n3 are tried.
    assert ("NodeSysctlPolicy", POLICY, "RolloutHalted") in kube.events
    assert kube.posts == []
    status = kube.status_patches[-1]
    assert conditions(status)["Degraded"]["reason"] == "FailureBudgetExhausted"
    assert status["worstNodes"][0]["message"].startswith("pod creation refused: ")
    assert conditions(status)["Progressing"]["status"] == "False"  # the Job no longer runs


@pytest.mark.parametrize(
    "job",
    [
        podless("n1", 5),  # its pod is probably on its way
        podless("n1", 60, active=1),  # it has a pod
        podless("n1", 60, finished=True),
        podless("n1", 60, owner_uid="uid-of-someone-else"),  # not this policy's Job
    ],
)
def test_events_are_listed_only_for_a_running_check_without_a_pod_for_a_while(
    job: JobFacts,
) -> None:
    kube = RefusingKube(events=[failed_create("nsc-n1", PSA, NOW - timedelta(seconds=5))])
    reconciler(kube).run_once(snapshot(NODES[:1], jobs=[job]), NOW)
    assert kube.event_lists == 0
    assert kube.jobs_deleted == []


def test_a_quota_that_other_checks_hold_is_left_to_the_job_controller() -> None:
    kube = RefusingKube(events=[failed_create("nsc-n1", BUSY_QUOTA, NOW - timedelta(seconds=5))])
    reconciler(kube).run_once(snapshot(NODES[:1], jobs=[podless("n1", 30)]), NOW)
    assert kube.event_lists == 1
    assert (kube.node_patches, kube.jobs_deleted) == ([], [])


def test_a_refused_generation_is_skipped_before_anything_else() -> None:
    """A remembered refusal needs no parse, no plan and no read: the pass returns at once."""
    kube = RefusingKube(KubeError(422, "Invalid", INVALID_TOLERATION))
    passes: PolicyReconciler = reconciler(kube)
    passes.run_once(snapshot(NODES), NOW)
    status = kube.status_patches[0]
    quiet = RefusingKube()
    passes.kube = quiet
    snap: Snapshot = snapshot(NODES, jobs=[podless("n1", 60)], status=status)
    passes.run_once(snap, NOW)
    assert quiet.event_lists == 0
    assert (quiet.posts, quiet.jobs_deleted, quiet.node_patches) == ([], [], [])
