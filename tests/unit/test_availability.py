"""Node availability: the facts read from a Node body, Kubernetes' toleration matching, and the
judgement whether an agent pod can run on the node now."""

from __future__ import annotations

from typing import Any

import pytest

from nodesysctl.api import TaintEffect, Toleration, parse_spec
from nodesysctl.availability import (
    AGENT_TOLERATIONS,
    UNSCHEDULABLE_TAINT_KEY,
    NodeAvailability,
    Taint,
    Unavailable,
    WaitReason,
    agent_tolerations,
    judge,
    tolerates,
)
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.planning import CheckOrder, CheckReason, NodeFacts

NO_SCHEDULE = TaintEffect.NO_SCHEDULE
NO_EXECUTE = TaintEffect.NO_EXECUTE
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


def node_body(
    *,
    ready: str | None = "True",
    heartbeat: str = "2026-11-25T12:00:00Z",
    unschedulable: bool | None = None,
    taints: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat},
    ]
    if ready is not None:
        conditions.append(
            {
                "type": "Ready",
                "status": ready,
                "reason": "KubeletReady",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": "2026-11-25T10:00:00Z",
            }
        )
    spec: dict[str, Any] = {}
    if unschedulable is not None:
        spec["unschedulable"] = unschedulable
    if taints is not None:
        spec["taints"] = taints
    return {
        "metadata": {"name": "n0", "resourceVersion": heartbeat},
        "spec": spec,
        "status": {"nodeInfo": {"bootID": "b"}, "conditions": conditions},
    }


# --- facts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ready", ["True", "False", "Unknown"])
def test_the_ready_condition_status_is_a_fact(ready: str) -> None:
    assert NodeFacts.from_body(node_body(ready=ready)).availability.ready == ready


def test_a_node_without_a_ready_condition_reads_as_missing() -> None:
    assert NodeFacts.from_body(node_body(ready=None)).availability.ready == ""
    assert NodeAvailability.from_body({}) == NodeAvailability(ready="")


def test_cordon_and_blocking_taints_are_facts_but_prefer_no_schedule_is_not() -> None:
    taints = [
        {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
        {"key": "soft", "effect": "PreferNoSchedule"},
        {"key": NOT_READY_TAINT, "effect": "NoExecute", "timeAdded": "2026-11-25T12:00:00Z"},
    ]
    facts = NodeFacts.from_body(node_body(unschedulable=True, taints=taints)).availability
    assert facts == NodeAvailability(
        ready="True",
        unschedulable=True,
        taints=(Taint("dedicated", "gpu", NO_SCHEDULE), Taint(NOT_READY_TAINT, "", NO_EXECUTE)),
    )
    assert NodeFacts.from_body(node_body(unschedulable=False)).availability.unschedulable is False


def test_heartbeats_and_taint_times_change_no_fact() -> None:
    taint = {"key": "k", "effect": "NoExecute", "timeAdded": "2026-11-25T12:00:00Z"}
    first = node_body(heartbeat="2026-11-25T12:00:00Z", taints=[taint])
    beat = node_body(
        heartbeat="2026-11-25T12:00:10Z", taints=[{**taint, "timeAdded": "2026-11-25T12:00:10Z"}]
    )
    assert NodeFacts.from_body(first) == NodeFacts.from_body(beat)


def test_status_flips_change_the_facts() -> None:
    ready = NodeFacts.from_body(node_body())
    assert NodeFacts.from_body(node_body(ready="Unknown")) != ready
    assert NodeFacts.from_body(node_body(unschedulable=True)) != ready
    assert NodeFacts.from_body(node_body(taints=[{"key": "k", "effect": "NoSchedule"}])) != ready


def test_facts_built_by_hand_default_to_an_available_node() -> None:
    assert judge(NodeFacts("n", {}, "b", {}).availability, ()) is None


# --- toleration matching (Kubernetes' Toleration.ToleratesTaint) ----------------------------


def tol(**fields: Any) -> Toleration:
    return Toleration.model_validate(fields)


DEDICATED = Taint("dedicated", "gpu", NO_SCHEDULE)


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        # Equal (also when the operator is omitted): key and value must match.
        (tol(key="dedicated", operator="Equal", value="gpu"), DEDICATED, True),
        (tol(key="dedicated", value="gpu"), DEDICATED, True),
        (tol(key="dedicated", operator="Equal", value="cpu"), DEDICATED, False),
        (tol(key="dedicated", operator="Equal"), DEDICATED, False),
        (tol(key="dedicated", operator="Equal"), Taint("dedicated", "", NO_SCHEDULE), True),
        (tol(key="other", operator="Equal", value="gpu"), DEDICATED, False),
        # Exists: any value of the key.
        (tol(key="dedicated", operator="Exists"), DEDICATED, True),
        (tol(key="other", operator="Exists"), DEDICATED, False),
        # An empty key with Exists tolerates every taint.
        (tol(operator="Exists"), DEDICATED, True),
        (tol(operator="Exists"), Taint(NOT_READY_TAINT, "", NO_EXECUTE), True),
        (tol(key="", operator="Exists"), DEDICATED, True),
        # An effect must match; an empty effect matches all effects.
        (tol(key="dedicated", operator="Exists", effect="NoSchedule"), DEDICATED, True),
        (tol(key="dedicated", operator="Exists", effect="NoExecute"), DEDICATED, False),
        (tol(key="dedicated", operator="Exists", effect="PreferNoSchedule"), DEDICATED, False),
        (tol(operator="Exists", effect="NoExecute"), DEDICATED, False),
        (tol(operator="Exists", effect="NoExecute"), Taint("x", "y", NO_EXECUTE), True),
        # tolerationSeconds does not matter to scheduling.
        (
            tol(key="x", operator="Exists", effect="NoExecute", tolerationSeconds=0),
            Taint("x", "", NO_EXECUTE),
            True,
        ),
    ],
)
def test_toleration_matching(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


# --- the judgement -------------------------------------------------------------------------


@pytest.mark.parametrize("ready", ["False", "Unknown", ""])
def test_a_node_not_ready_waits_whatever_the_tolerations(ready: str) -> None:
    node = NodeAvailability(ready=ready, taints=(Taint(NOT_READY_TAINT, "", NO_SCHEDULE),))
    assert judge(node, [tol(operator="Exists")]) == Unavailable(WaitReason.NOT_READY, ready=ready)


def test_not_ready_comes_before_cordoned_before_a_taint() -> None:
    everything = NodeAvailability(ready="Unknown", unschedulable=True, taints=(DEDICATED,))
    assert judge(everything, ()) == Unavailable(WaitReason.NOT_READY, ready="Unknown")
    cordoned = NodeAvailability(
        unschedulable=True,
        taints=(Taint(UNSCHEDULABLE_TAINT_KEY, "", NO_SCHEDULE), DEDICATED),
    )
    assert judge(cordoned, ()) == Unavailable(WaitReason.CORDONED)


def test_a_cordon_blocks_unless_the_unschedulable_taint_is_tolerated() -> None:
    # Affinity pinning goes through the scheduler; its NodeUnschedulable filter lets a pod that
    # tolerates node.kubernetes.io/unschedulable:NoSchedule onto a cordoned node.
    cordoned = NodeAvailability(unschedulable=True)
    assert judge(cordoned, [tol(key="dedicated", operator="Exists")]) is not None
    assert judge(cordoned, [tol(key=UNSCHEDULABLE_TAINT_KEY, operator="Exists")]) is None
    assert judge(cordoned, [tol(operator="Exists")]) is None
    assert judge(cordoned, [tol(operator="Exists", effect="NoExecute")]) is not None


def test_every_blocking_taint_must_be_tolerated_and_the_first_untolerated_is_named() -> None:
    gpu = Taint("gpu", "", NO_EXECUTE)
    node = NodeAvailability(taints=(DEDICATED, gpu))
    assert judge(node, ()) == Unavailable(WaitReason.TAINT_NOT_TOLERATED, taint=DEDICATED)
    partly = [tol(key="dedicated", operator="Exists")]
    assert judge(node, partly) == Unavailable(WaitReason.TAINT_NOT_TOLERATED, taint=gpu)
    assert judge(node, [*partly, tol(key="gpu", operator="Exists", effect="NoExecute")]) is None


def test_messages_start_with_the_reason() -> None:
    assert Unavailable(WaitReason.NOT_READY, ready="Unknown").message() == (
        "NotReady: the node's Ready condition is Unknown"
    )
    assert Unavailable(WaitReason.NOT_READY).message() == (
        "NotReady: the node's Ready condition is missing"
    )
    assert Unavailable(WaitReason.CORDONED).message().startswith("Cordoned: ")
    assert Unavailable(WaitReason.TAINT_NOT_TOLERATED, taint=DEDICATED).message() == (
        "TaintNotTolerated: dedicated (dedicated=gpu:NoSchedule is not tolerated by "
        "spec.job.tolerations)"
    )


def test_the_agent_job_carries_exactly_the_tolerations_the_judgement_uses() -> None:
    spec = parse_spec({"job": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}})
    assert agent_tolerations(spec) == (*spec.job.tolerations, *AGENT_TOLERATIONS)
    job = build_agent_job(
        policy="p",
        policy_uid="u",
        spec=spec,
        order=CheckOrder("n0", CheckReason.NEW, "nsc-p-x-y", "b"),
        settings=JobSettings(),
    )
    rendered = job["spec"]["template"]["spec"]["tolerations"]
    assert [Toleration.model_validate(t) for t in rendered] == list(agent_tolerations(spec))
    # ...and the pod is pinned through the scheduler (affinity), which the judgement assumes.
    assert "nodeName" not in job["spec"]["template"]["spec"]
    assert "nodeAffinity" in job["spec"]["template"]["spec"]["affinity"]


def test_available_nodes_share_one_facts_object() -> None:
    assert NodeAvailability.from_body(node_body()) is NodeAvailability.from_body(node_body())
    assert NodeAvailability.from_body(node_body(ready="False")) == NodeAvailability(ready="False")
