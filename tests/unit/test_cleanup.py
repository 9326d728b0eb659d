"""Deleting a policy cleans its nodes: the pure plan (`plan_cleanup`) and the step that carries
it out (`PolicyCleanup`), with the recording fake of the pass tests."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nodesysctl.agent.contract import AgentSpec
from nodesysctl.api import parse_spec
from nodesysctl.availability import NodeAvailability
from nodesysctl.cleanup import CLEANUP_TIMEOUT_SECONDS, CleanupPlan, plan_cleanup
from nodesysctl.compose import PolicyRanges
from nodesysctl.deletion import PolicyCleanup
from nodesysctl.jobs import JobSettings
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import CheckReason, JobFacts, NodeFacts, NodeResult, NodeState
from nodesysctl.reconcile import Snapshot

from .test_reconcile import RecordingKube

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GONE, UID = "gone", "uid-gone"
SPEC = parse_spec({"rollout": {"maxConcurrent": 5}})
STAYS = PolicyRanges("stays", "2026-11-01T00:00:00Z", parse_spec({}))


def result(dirs: tuple[str, ...] | None = ("/etc/sysctl.d",)) -> NodeResult:
    return NodeResult(NodeState.REMEDIATED, "h", "b1", NOW, "job", sysctl_dirs=dirs)


def node(name: str, labels: dict[str, str] | None = None, **results: NodeResult) -> NodeFacts:
    return NodeFacts(name, labels or {}, "b1", results)


def plan(
    nodes: Sequence[NodeFacts],
    *,
    spec: Any = SPEC,
    remaining: Sequence[PolicyRanges] = (),
    jobs: Sequence[JobFacts] = (),
    outcomes: Mapping[str, Sequence[PodOutcome]] | None = None,
    busy: frozenset[str] = frozenset(),
    elapsed: float = 0.0,
) -> CleanupPlan:
    return plan_cleanup(
        policy=GONE, uid=UID, spec=spec, nodes=nodes, remaining=remaining, jobs=jobs,
        outcomes=outcomes or {}, busy=busy, elapsed=elapsed, now=NOW,
    )  # fmt: skip


def own_job(name: str, node_name: str, *, finished: bool = False, ok: bool = True) -> JobFacts:
    return JobFacts(
        name, GONE, node_name, "h", "b1", NOW, finished=finished, succeeded=ok and finished,
        uid=f"uid-{name}", owner_uid=UID,
    )  # fmt: skip


def outcome(job: JobFacts, status: str) -> PodOutcome:
    message = json.dumps({"policy": GONE, "status": status, "checkedAt": "2026-11-25T12:00:00Z"})
    code = 0 if status != "Failed" else 1
    return PodOutcome(job.name, code, message, "", f"{job.name}-pod", job.uid, job.node)


# --- which nodes, what target -----------------------------------------------------------------


def test_every_node_the_policy_checked_gets_the_composition_of_what_remains() -> None:
    nodes = [node("n1", gone=result()), node("n2", gone=result()), node("other")]
    first = plan(nodes, remaining=[STAYS])
    assert [c.order.node for c in first.checks] == ["n1", "n2"]  # not "other": never checked
    assert {c.order.reason for c in first.checks} == {CheckReason.DELETED}
    assert first.checks[0].target.policies == ("stays",)  # its file is rewritten for "stays"
    assert first.pending == ("n1", "n2")
    assert not first.done
    alone = plan(nodes)
    target = alone.checks[0].target
    assert (target.policies, target.persist, target.narrow_range) == ((), False, False)
    assert alone.checks[0].dirs.mounted  # the result records a file in /etc/sysctl.d


def test_a_finished_check_cleans_or_fails_its_node_and_the_deletion_is_done() -> None:
    nodes = [node("n1", gone=result()), node("n2", gone=result())]
    names = {c.order.node: c.order.job_name for c in plan(nodes).checks}
    ok = own_job(names["n1"], "n1", finished=True)
    bad = own_job(names["n2"], "n2", finished=True, ok=False)
    done = plan(
        nodes, jobs=[ok, bad],
        outcomes={ok.name: [outcome(ok, "Remediated")], bad.name: [outcome(bad, "Failed")]},
    )  # fmt: skip
    assert done.cleaned == ("n1",)
    assert [n for n, _ in done.failed] == ["n2"]
    assert done.done
    assert done.checks == ()


def test_running_checks_wait_and_other_jobs_of_the_policy_are_stopped_first() -> None:
    nodes = [node("n1", gone=result()), node("n2", gone=result()), node("n3", gone=result())]
    names = {c.order.node: c.order.job_name for c in plan(nodes).checks}
    running = own_job(names["n1"], "n1")
    leftover = own_job("nsc-gone-old", "n2")  # a regular check still running: it would race
    step = plan(nodes, jobs=[running, leftover], busy=frozenset({"n3"}))
    assert step.stale_jobs == ("nsc-gone-old",)
    assert step.checks == ()  # n1 runs, n2 waits for its old Job, n3 for another policy's
    assert step.pending == ("n1", "n2", "n3")


def test_a_node_that_cannot_run_the_check_is_reported_at_once() -> None:
    cordoned = dataclasses.replace(
        node("n1", gone=result()), availability=NodeAvailability(unschedulable=True)
    )
    step = plan([cordoned])
    assert step.checks == ()
    [(name, why)] = step.failed
    assert name == "n1"
    assert why.startswith("cannot run the cleanup check: ")
    assert step.done


def test_the_deletion_gives_up_on_the_rest_after_the_timeout() -> None:
    nodes = [node("n1", gone=result())]
    late = plan(nodes, busy=frozenset({"n1"}), elapsed=CLEANUP_TIMEOUT_SECONDS)
    assert late.timed_out
    assert late.done
    assert late.unclean() == [("n1", "the cleanup check did not finish in time")]
    assert plan(nodes, elapsed=CLEANUP_TIMEOUT_SECONDS).checks == ()


def test_an_audit_policy_cleans_only_where_it_once_wrote() -> None:
    audit = parse_spec({"remediation": {"mode": "Audit"}})
    nodes = [node("fresh", gone=result(())), node("was-enforce", gone=result())]
    assert [c.order.node for c in plan(nodes, spec=audit).checks] == ["was-enforce"]


def test_a_result_from_before_the_record_cleans_the_policys_own_directory_too() -> None:
    moved = parse_spec({"remediation": {"sysctlDir": "/usr/local/lib/sysctl.d"}})
    check = plan([node("n1", gone=result(None))], spec=moved, remaining=[STAYS]).checks[0]
    assert check.target.sysctl_dir == "/etc/sysctl.d"  # where "stays" persists
    assert check.dirs.clean == ("/usr/local/lib/sysctl.d",)


def test_a_deletion_with_no_node_to_clean_is_done_at_once() -> None:
    assert plan([node("n1")]).done


# --- the step: Jobs, claims, Events -----------------------------------------------------------


def snapshot(nodes: list[NodeFacts], jobs: list[JobFacts] | None = None, **extra: Any) -> Snapshot:
    return Snapshot(
        name=GONE, uid=UID, generation=3, created="2026-11-02T00:00:00Z",
        spec={"rollout": {"maxConcurrent": 5}}, status={}, nodes=nodes, jobs=jobs or [],
        pod_outcomes={}, other_policies=[STAYS], **extra,
    )  # fmt: skip


class Claims:
    def __init__(self) -> None:
        self.claimed: list[str] = []

    def claim(self, node: str, policy: str, job: str) -> bool:
        self.claimed.append(node)
        return True

    def release(self, node: str, job: str) -> None:
        pass


def test_a_step_creates_the_cleanup_jobs_and_asks_to_be_called_again() -> None:
    kube = RecordingKube()
    claims = Claims()
    step = PolicyCleanup(kube, JobSettings(namespace="jobs"), claims).run_once(
        snapshot([node("n1", gone=result())]), 1.0, NOW
    )
    assert not step.done
    assert step.retry_in > 0
    [job] = kube.jobs_created
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    spec = AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))
    assert spec.policies == ["stays"]
    assert job["metadata"]["annotations"]["nodesysctl.io/reason"] == "PolicyDeleted"
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    assert claims.claimed == ["n1"]


def test_the_last_step_reports_the_nodes_left_unclean_once() -> None:
    kube = RecordingKube()
    cleanup = PolicyCleanup(kube, JobSettings(namespace="jobs"), Claims())
    snap = snapshot([node("n1", gone=result())], busy=frozenset({"n1"}))
    step = cleanup.run_once(snap, CLEANUP_TIMEOUT_SECONDS + 1, NOW)
    assert step.done
    assert ("Node", "n1", "CleanupFailed") in kube.events
    assert ("NodeSysctlPolicy", GONE, "CleanupIncomplete") in kube.events
    assert "n1 (the cleanup check did not finish in time)" in kube.event_messages[-1]
    assert kube.jobs_created == []


def test_a_finished_check_whose_pod_the_watch_missed_is_read_from_the_api() -> None:
    nodes = [node("n1", gone=result())]
    name = plan(nodes, remaining=[STAYS]).checks[0].order.job_name
    finished = own_job(name, "n1", finished=True)
    pod = {
        "metadata": {
            "name": f"{name}-pod",
            "labels": {"batch.kubernetes.io/job-name": name},
            "ownerReferences": [{"controller": True, "kind": "Job", "uid": finished.uid,
                                 "apiVersion": "batch/v1"}],
        },
        "spec": {"nodeName": "n1"},
        "status": {"containerStatuses": [{"name": "agent", "state": {"terminated": {
            "exitCode": 0, "message": outcome(finished, "Compliant").message}}}]},
    }  # fmt: skip
    kube = RecordingKube(job_pods={name: [pod]})
    step = PolicyCleanup(kube, JobSettings(namespace="jobs"), Claims()).run_once(
        snapshot(nodes, [finished]), 10.0, NOW
    )
    assert step.done
    assert kube.events == []  # cleaned: nothing to report
