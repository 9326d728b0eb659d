"""The operator's in-memory state without Kopf: node updates, wake-ups, write-through of our
own results until the watch echoes them, which node each pass waits for, the claims that keep
one agent Job per node, and the snapshot a pass starts from."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from nodesysctl.api import TaintEffect, parse_spec
from nodesysctl.availability import NodeAvailability, Taint
from nodesysctl.nodewatch import NodeChanged, NodesListed
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, PolicyRanges
from nodesysctl.reconcile import PassResult
from nodesysctl.state import CLAIM_GRACE_SECONDS, NodeClaims, OperatorState, busy_nodes

CHECKED = datetime(2026, 1, 1, tzinfo=UTC)
NO_JOBS: dict[str, list[JobFacts]] = {}
NO_PODS: dict[str, list[PodOutcome]] = {}


def node(name: str, **results: NodeResult) -> NodeFacts:
    return NodeFacts(name=name, labels={}, boot_id="b1", results=results)


def result(job: str, state: NodeState = NodeState.COMPLIANT) -> NodeResult:
    return NodeResult(state, "hash", "b1", CHECKED, job)


def ranges(policy: str, **ports: Any) -> PolicyRanges:
    return PolicyRanges(policy, "2026-01-01T00:00:00Z", parse_spec({"ports": ports}))


def policy_body(generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"remediation": {"mode": "Audit"}},
        "status": {"nodes": 1},
    }


def listed(*nodes: NodeFacts) -> OperatorState:
    state = OperatorState()
    state.apply_node_update(NodesListed(list(nodes)))
    return state


def woken(state: OperatorState) -> set[str]:
    return {name for name, event in state.wakeups.items() if event.is_set()}


def clear(state: OperatorState) -> None:
    for event in state.wakeups.values():
        event.clear()


# --- Nodes ----------------------------------------------------------------------------------


def test_node_updates_complete_the_list_and_wake_only_on_changed_facts() -> None:
    state = OperatorState()
    state.wakeup("p")
    assert not state.nodes_listed.is_set()
    state.apply_node_update(NodesListed([node("a")]))
    assert state.nodes_listed.is_set()
    assert woken(state) == {"p"}
    clear(state)
    state.apply_node_update(NodeChanged(node("a")))  # a heartbeat: same facts
    assert woken(state) == set()
    state.apply_node_update(NodeChanged(node("b")))
    assert woken(state) == {"p"}
    assert set(state.nodes) == {"a", "b"}


def test_a_deleted_node_drops_the_results_we_wrote_on_it() -> None:
    state = listed(node("a"), node("b"))
    state.record_pass("p", PassResult(5.0, {"a": result("j1"), "b": result("j2")}))
    state.apply_node_update(NodeChanged(node("a"), deleted=True))
    assert state.written == {("p", "b"): result("j2")}
    state.apply_node_update(NodesListed([]))  # a relist without b: gone too
    assert state.written == {}


def test_nodes_with_results_are_those_annotated_by_that_policy() -> None:
    state = listed(node("a", p=result("j1")), node("b", q=result("j2")), node("c"))
    assert state.nodes_with_results("p") == ["a"]


# --- Write-through of our own results -------------------------------------------------------


def test_the_overlay_keeps_our_result_until_the_watch_echoes_it_then_drops_it() -> None:
    state = listed(node("a"))
    ours = result("j1")
    state.record_pass("p", PassResult(5.0, {"a": ours}))

    snap = state.snapshot("p", "uid", policy_body(), NO_JOBS, NO_PODS)
    assert snap.nodes[0].results == {"p": ours}  # the watch has not echoed it yet
    assert state.nodes["a"].results == {}  # the cache itself stays what the watch said
    assert state.snapshot("q", "uid", policy_body(), NO_JOBS, NO_PODS).nodes[0].results == {}

    state.apply_node_update(NodeChanged(node("a", p=ours)))  # the echo
    assert state.snapshot("p", "uid", policy_body(), NO_JOBS, NO_PODS).nodes[0].results == {
        "p": ours
    }
    assert state.written == {}  # dropped: from now on the watch is the truth
    state.apply_node_update(NodeChanged(node("a", p=result("j2", NodeState.DRIFTED))))
    seen = state.snapshot("p", "uid", policy_body(), NO_JOBS, NO_PODS).nodes[0]
    assert seen.results["p"].job == "j2"


def test_an_older_result_from_the_watch_does_not_replace_ours() -> None:
    state = listed(node("a", p=result("old")))
    state.record_pass("p", PassResult(5.0, {"a": result("new")}))
    snap = state.snapshot("p", "uid", policy_body(), NO_JOBS, NO_PODS)
    assert snap.nodes[0].results["p"].job == "new"
    assert ("p", "a") in state.written


# --- Waiting for a node, and wake-ups --------------------------------------------------------
# Until issue 12 a pass recorded its policy's ranges here and woke the others when they changed;
# the policy index (handlers.policy_index) has replaced that, and a pass records instead which
# nodes it could not check because another agent Job occupied them.


def test_a_job_event_wakes_its_policy_and_the_policies_waiting_for_its_node() -> None:
    state = listed()
    for name in ("p", "q", "r"):
        state.wakeup(name)
    state.record_pass("q", PassResult(5.0, {}, queued={"a"}))
    state.record_pass("r", PassResult(5.0, {}, queued={"b"}))
    state.job_changed("p", "a")
    assert woken(state) == {"p", "q"}
    clear(state)
    state.record_pass("q", PassResult(5.0, {}))  # no longer waiting
    state.job_changed("p", "a")
    assert woken(state) == {"p"}
    assert state.queued == {"r": frozenset({"b"})}


def test_forget_policy_clears_its_wakeups_waits_claims_and_written_and_wakes_the_others() -> None:
    state = listed(node("a"))
    state.wakeup("p")
    state.wakeup("q")
    state.record_pass("p", PassResult(5.0, {"a": result("j1")}, queued={"b"}))
    state.record_pass("q", PassResult(5.0, {"a": result("j2")}))
    assert state.claims.claim("c", "p", "job-c")
    clear(state)
    state.forget_policy("p")
    assert set(state.wakeups) == {"q"}
    assert woken(state) == {"q"}
    assert state.queued == {}
    assert state.claims.held_by_others("q") == set()
    assert state.written == {("q", "a"): result("j2")}


# --- At most one agent Job per node -----------------------------------------------------------


def job_facts(name: str, policy: str, node_name: str, finished: bool = False) -> JobFacts:
    return JobFacts(name, policy, node_name, "hash", "b1", CHECKED, finished=finished)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_claimed_node_is_refused_to_other_policies_until_its_job_has_finished() -> None:
    claims = NodeClaims(Clock())
    assert claims.claim("a", "p", "job-1")
    assert claims.claim("a", "p", "job-2")  # the same policy: its own planning decides
    assert not claims.claim("a", "q", "job-3")
    assert claims.held_by_others("q") == {"a"}
    claims.refresh({"p": [job_facts("job-2", "p", "a")]})  # seen, running
    assert not claims.claim("a", "q", "job-3")
    claims.refresh({"p": [job_facts("job-2", "p", "a", finished=True)]})
    assert claims.claim("a", "q", "job-3")


def test_a_claim_ends_when_its_seen_job_is_gone_or_it_never_shows_up() -> None:
    clock = Clock()
    claims = NodeClaims(clock)
    claims.claim("a", "p", "job-1")
    claims.claim("b", "p", "job-2")
    claims.refresh({"p": [job_facts("job-1", "p", "a")]})
    claims.refresh({})  # job-1 was seen and is gone (deleted); job-2 was never seen yet
    assert claims.held_by_others("q") == {"b"}
    clock.now = CLAIM_GRACE_SECONDS + 1
    claims.refresh({})
    assert claims.held_by_others("q") == set()


def test_release_gives_back_only_that_jobs_claim() -> None:
    claims = NodeClaims(Clock())
    claims.claim("a", "p", "job-1")
    claims.release("a", "job-other")
    assert claims.held_by_others("q") == {"a"}
    claims.release("a", "job-1")
    assert claims.held_by_others("q") == set()


def test_busy_nodes_are_the_other_policies_running_jobs_and_claims() -> None:
    claims = NodeClaims(Clock())
    claims.claim("c", "q", "job-c")
    claims.claim("d", "p", "job-d")
    jobs = {
        "p": [job_facts("job-p", "p", "x")],
        "q": [job_facts("job-a", "q", "a"), job_facts("job-b", "q", "b", finished=True)],
    }
    assert busy_nodes("p", jobs, claims) == {"a", "c"}
    assert busy_nodes("q", jobs, claims) == {"x", "d"}


# --- The snapshot ---------------------------------------------------------------------------


def test_the_snapshot_is_built_from_the_body_the_nodes_and_the_indexes() -> None:
    state = listed(node("a"), node("b"))
    policies = {"other": [ranges("other")], "p": [ranges("p")]}
    job = JobFacts("job-a", "p", "a", "hash", "b1", CHECKED, finished=True, succeeded=True)
    running = JobFacts("job-b", "p", "b", "hash", "b1", CHECKED)
    foreign = JobFacts("job-x", "q", "a", "hash", "b1", CHECKED)
    outcome = PodOutcome("job-a", 0, "{}", "Completed")
    jobs = {"p": [job, running], "q": [foreign]}
    pods = {"job-a": [outcome], "job-x": [PodOutcome("job-x", 1, "", "Error")]}

    snap = state.snapshot("p", "uid-1", policy_body(generation=3), jobs, pods, policies)
    assert (snap.name, snap.uid, snap.generation) == ("p", "uid-1", 3)
    assert snap.created == "2026-01-01T00:00:00Z"
    assert snap.spec == {"remediation": {"mode": "Audit"}}
    assert snap.status == {"nodes": 1}
    assert [n.name for n in snap.nodes] == ["a", "b"]
    assert list(snap.jobs) == [job, running]
    assert snap.pod_outcomes == {"job-a": (outcome,)}  # only this policy's Jobs' pods
    assert list(snap.other_policies) == [ranges("other")]  # not its own
    assert snap.busy == {"a"}  # q's Job runs there


def test_a_new_policy_snapshots_with_empty_indexes_and_a_bare_body() -> None:
    snap = listed().snapshot("p", "uid", {"metadata": {}}, NO_JOBS, NO_PODS)
    assert (snap.generation, snap.created, snap.spec, snap.status) == (0, "", {}, {})
    assert (list(snap.nodes), list(snap.jobs), snap.pod_outcomes) == ([], [], {})


def test_the_snapshot_names_the_nodes_still_carrying_a_readiness_taint() -> None:
    ours = Taint("nodesysctl.io/unverified", "", TaintEffect.NO_SCHEDULE)
    unverified = NodeAvailability(taints=(ours,))
    foreign = NodeAvailability(taints=(Taint("example.com/gpu", "", TaintEffect.NO_SCHEDULE),))
    state = listed(
        dataclasses.replace(node("new"), availability=unverified),
        dataclasses.replace(node("gpu"), availability=foreign),
        node("plain"),
    )
    # The maintenance windows let these through at once (maintenance.gate).
    assert state.snapshot("p", "uid", policy_body(), NO_JOBS, NO_PODS).unverified == {"new"}
