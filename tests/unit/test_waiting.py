"""Nodes that cannot run a check now (not Ready, cordoned, a taint not tolerated): the planner
gives them no Job, reports them Waiting with the reason, never counts them as failed, gives
them no concurrency slot, and checks them as soon as they are available again."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from nodesysctl.api import TaintEffect
from nodesysctl.availability import NodeAvailability, Taint
from nodesysctl.planning import (
    CheckReason,
    NodeFacts,
    NodeState,
    WorstNode,
    is_quiescent,
    plan_rollout,
    select_nodes,
)
from nodesysctl.policy_status import StatusInputs, build_conditions, build_status
from nodesysctl.report import build_rows
from tests.unit.test_planning import NOW, POLICY, job, make_spec, node, result
from tests.unit.test_reconcile import RecordingKube, reconciler, snapshot

NOT_READY = NodeAvailability(ready="Unknown")
CORDONED = NodeAvailability(unschedulable=True)
TAINTED = NodeAvailability(taints=(Taint("dedicated", "gpu", TaintEffect.NO_SCHEDULE),))


def unavailable(facts: NodeFacts, availability: NodeAvailability) -> NodeFacts:
    return dataclasses.replace(facts, availability=availability)


def fleet() -> list[NodeFacts]:
    """Two nodes that cannot run a check, sorted first, and three that can."""
    return [
        unavailable(node("a-cordoned"), CORDONED),
        unavailable(node("a-dead"), NOT_READY),
        node("n0"),
        node("n1"),
        node("n2"),
    ]


def test_waiting_nodes_get_no_job_and_take_no_slot() -> None:
    spec = make_spec()  # maxConcurrent 2
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=fleet(), jobs=[], now=NOW)
    assert [c.node for c in plan.checks] == ["n0", "n1"]  # not the two nodes sorted first
    assert (plan.summary.waiting, plan.summary.pending, plan.summary.failed) == (2, 3, 0)
    assert plan.next_due_in is None  # the node watch wakes the policy, no timer needed


def test_waiting_nodes_never_count_toward_max_failed_nodes() -> None:
    spec = make_spec(rollout={"maxConcurrent": 5, "maxFailedNodes": 1})
    nodes = [unavailable(node(f"w{i}"), NOT_READY) for i in range(4)] + [node("n0")]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert not plan.halted
    assert plan.summary.failed == 0
    assert [c.node for c in plan.checks] == ["n0"]


def test_a_rollout_of_only_waiting_nodes_is_quiescent() -> None:
    spec = make_spec()
    done = node("n0", result=result(spec))
    plan = plan_rollout(
        policy=POLICY, spec=spec, nodes=[done, unavailable(node("w"), TAINTED)], jobs=[], now=NOW
    )
    assert plan.checks == ()
    assert is_quiescent(plan)  # restart waves for remediated nodes are not held up


def test_a_waiting_node_is_checked_as_soon_as_it_is_available() -> None:
    spec = make_spec()
    waiting = unavailable(node("w"), NOT_READY)
    assert plan_rollout(policy=POLICY, spec=spec, nodes=[waiting], jobs=[], now=NOW).checks == ()
    back = dataclasses.replace(waiting, availability=NodeAvailability())
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[back], jobs=[], now=NOW)
    assert [(c.node, c.reason) for c in plan.checks] == [("w", CheckReason.NEW)]
    assert plan.summary.waiting == 0


def test_a_policy_that_tolerates_the_taint_checks_the_node() -> None:
    tolerant = make_spec(job={"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    tainted = unavailable(node("t"), TAINTED)
    plan = plan_rollout(policy=POLICY, spec=tolerant, nodes=[tainted], jobs=[], now=NOW)
    assert [c.node for c in plan.checks] == ["t"]
    plan = plan_rollout(policy=POLICY, spec=make_spec(), nodes=[tainted], jobs=[], now=NOW)
    assert plan.checks == ()
    assert plan.summary.worst == (
        WorstNode(
            "t",
            NodeState.WAITING,
            "TaintNotTolerated: dedicated (dedicated=gpu:NoSchedule is not tolerated by "
            "spec.job.tolerations)",
        ),
    )


def test_tolerating_every_taint_reaches_every_selected_node_that_is_ready() -> None:
    """What a policy writer gets from a toleration without a key (`{operator: Exists}`, which
    Kubernetes and the CRD accept): checks on cordoned nodes, on the control plane and on nodes
    tainted NoExecute, all at once with maxConcurrent 100%. A node that is not Ready still
    waits, and a node the selector leaves out gets nothing."""
    control_plane = NodeAvailability(
        taints=(Taint("node-role.kubernetes.io/control-plane", "", TaintEffect.NO_SCHEDULE),)
    )
    no_execute = NodeAvailability(taints=(Taint("dedicated", "db", TaintEffect.NO_EXECUTE),))
    nodes = [
        unavailable(node("cordoned"), CORDONED),
        unavailable(node("cp"), control_plane),
        unavailable(node("db"), no_execute),
        unavailable(node("dead"), NOT_READY),
        node("plain"),
        node("other", labels={"pool": "other"}),
    ]
    everything = {"tolerations": [{"operator": "Exists"}]}
    rollout = {"maxConcurrent": "100%", "maxFailedNodes": 1, "recheckInterval": "1h"}
    every_node = make_spec(job=everything, rollout=rollout)
    plan = plan_rollout(
        policy=POLICY, spec=every_node, nodes=select_nodes(every_node, nodes), jobs=[], now=NOW
    )
    assert sorted(c.node for c in plan.checks) == ["cordoned", "cp", "db", "other", "plain"]
    assert plan.summary.waiting == 1
    selected = make_spec(
        job=everything,
        rollout=rollout,
        nodeSelector={"matchExpressions": [{"key": "pool", "operator": "DoesNotExist"}]},
    )
    plan = plan_rollout(
        policy=POLICY, spec=selected, nodes=select_nodes(selected, nodes), jobs=[], now=NOW
    )
    assert sorted(c.node for c in plan.checks) == ["cordoned", "cp", "db", "plain"]
    # Without the toleration, only the untainted, schedulable node is checked.
    plain = make_spec(rollout=rollout)
    plan = plan_rollout(
        policy=POLICY, spec=plain, nodes=select_nodes(plain, nodes), jobs=[], now=NOW
    )
    assert sorted(c.node for c in plan.checks) == ["other", "plain"]


def test_a_running_check_on_a_node_that_became_unavailable_is_left_alone() -> None:
    spec = make_spec()
    dead = unavailable(node("n0"), NOT_READY)
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[dead], jobs=[job("n0", spec)], now=NOW)
    assert plan.stale_jobs == ()  # not deleted: it finishes or hits its deadline
    assert plan.checks == ()
    assert (plan.summary.in_flight, plan.summary.pending, plan.summary.waiting) == (1, 1, 0)


def test_a_node_with_a_current_result_keeps_it_while_unavailable() -> None:
    spec = make_spec()
    due = node("due", result=result(spec, age=timedelta(hours=2)))  # recheck due
    fresh = node("fresh", result=result(spec, NodeState.DRIFTED))
    nodes = [unavailable(due, CORDONED), unavailable(fresh, CORDONED)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert plan.checks == ()  # the recheck waits too
    assert (plan.summary.compliant, plan.summary.drifted, plan.summary.waiting) == (1, 1, 0)
    # Uncordoned: the recheck that came due meanwhile runs at once.
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[due, fresh], jobs=[], now=NOW)
    assert [(c.node, c.reason) for c in plan.checks] == [("due", CheckReason.RECHECK_DUE)]


def test_worst_nodes_rank_waiting_after_failed_and_drifted_before_pending() -> None:
    spec = make_spec()
    nodes = [
        node("p"),
        unavailable(node("w"), CORDONED),
        node("f", result=result(spec, NodeState.FAILED)),
        node("d", result=result(spec, NodeState.DRIFTED)),
    ]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert [(w.name, w.state) for w in plan.summary.worst] == [
        ("f", NodeState.FAILED),
        ("d", NodeState.DRIFTED),
        ("w", NodeState.WAITING),
        ("p", NodeState.PENDING),
    ]
    assert plan.summary.worst[2].message.startswith("Cordoned: ")


# --- status -----------------------------------------------------------------------------------


def conditions(summary: Any) -> dict[str, dict[str, Any]]:
    inputs = StatusInputs(1, "Enforce", summary, halted=False)
    return {c["type"]: c for c in build_conditions(inputs)}


def test_status_counts_waiting_nodes_and_ready_says_why_it_is_false() -> None:
    spec = make_spec()
    nodes = [node("n0", result=result(spec)), unavailable(node("w"), NOT_READY)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    status = build_status(StatusInputs(1, "Enforce", plan.summary, halted=plan.halted))
    assert (status["compliant"], status["pending"], status["waiting"]) == (1, 0, 1)
    assert status["worstNodes"] == [
        {
            "name": "w",
            "state": "Waiting",
            "message": "NotReady: the node's Ready condition is Unknown",
        }
    ]
    found = conditions(plan.summary)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "NodesWaiting")
    assert (found["Progressing"]["status"], found["Degraded"]["status"]) == ("False", "False")
    assert "1 nodes waiting" in found["Progressing"]["message"]


def test_failures_and_a_running_rollout_outrank_waiting_in_the_ready_reason() -> None:
    spec = make_spec()
    nodes = [node("f", result=result(spec, NodeState.FAILED)), unavailable(node("w"), CORDONED)]
    failed = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW).summary
    assert conditions(failed)["Ready"]["reason"] == "NodesNotCompliant"
    nodes = [node("p"), unavailable(node("w"), CORDONED)]
    running = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW).summary
    assert conditions(running)["Ready"]["reason"] == "RolloutInProgress"


# --- nodesysctl status ----------------------------------------------------------------------


def test_report_rows_show_waiting_with_the_reason() -> None:
    body = {"metadata": {"name": POLICY}, "spec": {}}
    nodes = [
        unavailable(node("a"), NOT_READY),
        unavailable(node("b"), CORDONED),
        unavailable(node("c"), TAINTED),
        node("d"),
    ]
    rows = build_rows([body], nodes, NOW)
    assert [(r.node, r.state, r.detail.split(":")[0]) for r in rows] == [
        ("a", "Waiting", "NotReady"),
        ("b", "Waiting", "Cordoned"),
        ("c", "Waiting", "TaintNotTolerated"),
        ("d", "Pending", ""),
    ]
    tolerant = {**body, "spec": {"job": {"tolerations": [{"operator": "Exists"}]}}}
    assert [r.state for r in build_rows([tolerant], nodes, NOW)] == [
        "Waiting",  # not Ready: no toleration helps
        "Pending",
        "Pending",
        "Pending",
    ]


# --- one pass ---------------------------------------------------------------------------------


def test_a_pass_creates_no_job_and_writes_nothing_onto_a_waiting_node() -> None:
    kube = RecordingKube()
    nodes = [unavailable(NodeFacts("dead", {}, "boot-1", {}), NOT_READY)]
    nodes.append(NodeFacts("ok", {}, "boot-1", {}))
    reconciler(kube).run_once(snapshot(nodes), NOW)
    assert [j["metadata"]["annotations"]["nodesysctl.io/node"] for j in kube.jobs_created] == ["ok"]
    assert kube.node_patches == []  # Waiting is derived from the facts on every pass
    assert kube.status_patches[-1]["waiting"] == 1
    assert [e for e in kube.events if e[1] == "dead"] == []
