"""Whether a node can run an agent pod now: its availability facts and the judgement on them.

A node that cannot run the pod must not get a Job. Its pod would stay Pending until
`activeDeadlineSeconds`, the Job would fail, the node would count as Failed, a concurrency slot
would sit idle meanwhile, and `maxFailedNodes` would halt the rollout for a fault that is not
the policy's (issue 12: 61 of 300 nodes NotReady left a rollout at 239/300 after 15 minutes).

What really blocks the pod follows from how it is pinned: `jobs.pin_to_node` uses required node
affinity on `metadata.name`, not `nodeName`, so the pod goes through the scheduler, and the
scheduler refuses a node that
- has a NoSchedule or NoExecute taint the pod does not tolerate (TaintToleration; the pod's
  tolerations are the policy's `spec.job.tolerations` plus `AGENT_TOLERATIONS` and the
  readiness taints of ours, see `agent_tolerations`), or
- is cordoned (`spec.unschedulable`), unless the pod tolerates the
  `node.kubernetes.io/unschedulable:NoSchedule` taint (NodeUnschedulable; the toleration
  DaemonSet pods carry). A policy that tolerates everything (`operator: Exists`, no key) is
  therefore checked on cordoned nodes too, as its pod would be.
PreferNoSchedule taints never block and are not kept. Had the pod been pinned with `nodeName`,
the scheduler would be bypassed: NoSchedule taints and cordons would not block it, NoExecute
taints would (the kubelet rejects the pod).

One thing the scheduler does not decide: a node whose Ready condition is not True. Its
`node.kubernetes.io/not-ready` / `unreachable` taints usually block the pod anyway, but a policy
may tolerate them, and a kubelet that stopped posting status does not start the pod. Ready=True
is therefore required whatever the tolerations. (The DefaultTolerationSeconds admission plugin
adds not-ready/unreachable NoExecute tolerations to every pod; those taints never come without
their NoSchedule twins and a Ready condition that is not True, so they change nothing here.)

The facts are small and stable across heartbeats: the Ready condition's status (not its
`lastHeartbeatTime`), `spec.unschedulable`, and each blocking taint's key, value and effect (not
its `timeAdded`), so a heartbeat still changes no facts and wakes no policy.

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from nodesysctl.api import NodeSysctlPolicySpec, TaintEffect, Toleration, TolerationOperator
from nodesysctl.labels import READINESS_TAINT_PREFIX

# The taint the scheduler's NodeUnschedulable filter asks a cordoned node's pods to tolerate
# (the node lifecycle controller also puts it on the node, with effect NoSchedule).
UNSCHEDULABLE_TAINT_KEY = "node.kubernetes.io/unschedulable"
# Tolerations the operator adds to every agent pod, beside the policy's own: none today.
# `jobs.build_agent_job` renders `agent_tolerations`, so the Job and this judgement agree.
AGENT_TOLERATIONS: tuple[Toleration, ...] = ()
_BLOCKING_EFFECTS = frozenset({TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE})


class WaitReason(StrEnum):
    """Why a node cannot run a check now (the first that applies, in this order)."""

    NOT_READY = "NotReady"
    CORDONED = "Cordoned"
    TAINT_NOT_TOLERATED = "TaintNotTolerated"


@dataclasses.dataclass(frozen=True)
class Taint:
    """A NoSchedule or NoExecute taint of a node (corev1.Taint without `timeAdded`)."""

    key: str
    value: str
    effect: TaintEffect

    def __str__(self) -> str:
        value = f"={self.value}" if self.value else ""
        return f"{self.key}{value}:{self.effect}"


@dataclasses.dataclass(frozen=True)
class NodeAvailability:
    """The availability facts of a node. The defaults describe a node that can run a check."""

    ready: str = "True"  # the Ready condition's status: True, False, Unknown; "" if it has none
    unschedulable: bool = False  # spec.unschedulable (kubectl cordon / drain)
    taints: tuple[Taint, ...] = ()  # NoSchedule and NoExecute only, in the node's order

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeAvailability:
        spec = body.get("spec") or {}
        ready = ""
        for cond in (body.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Ready":
                ready = str(cond.get("status") or "")
        taints = []
        for raw in spec.get("taints") or ():
            effect = raw.get("effect")
            if effect in _BLOCKING_EFFECTS:
                key, value = str(raw.get("key") or ""), str(raw.get("value") or "")
                taints.append(Taint(key, value, TaintEffect(effect)))
        facts = cls(
            ready=ready, unschedulable=bool(spec.get("unschedulable")), taints=tuple(taints)
        )
        # Most nodes are available: they share one object (thousands of nodes stay cached).
        return AVAILABLE if facts == AVAILABLE else facts


# A node that can run a check (facts built by hand default to it).
AVAILABLE = NodeAvailability()


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """Why a node waits: the reason, and the taint when it is one."""

    reason: WaitReason
    ready: str = ""
    taint: Taint | None = None

    def message(self) -> str:
        """The reason first (`NotReady`, `Cordoned`, `TaintNotTolerated: <key>`), then what to
        look at; shown in `status.worstNodes` and `nodesysctl status`."""
        match self.reason:
            case WaitReason.NOT_READY:
                seen = f"is {self.ready}" if self.ready else "is missing"
                return f"NotReady: the node's Ready condition {seen}"
            case WaitReason.CORDONED:
                return "Cordoned: spec.unschedulable is true (cordoned or draining)"
            case WaitReason.TAINT_NOT_TOLERATED:
                assert self.taint is not None
                return (
                    f"TaintNotTolerated: {self.taint.key} ({self.taint} is not tolerated by "
                    "spec.job.tolerations)"
                )


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes' `Toleration.ToleratesTaint`: an empty effect matches every effect, an empty
    key (only with Exists) every key; Exists ignores the value, Equal (the default) compares it.
    `tolerationSeconds` does not matter to scheduling, nor to a check far shorter than it."""
    if toleration.effect is not None and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == TolerationOperator.EXISTS:
        return True
    return (toleration.value or "") == taint.value


def tolerated(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    return any(tolerates(toleration, taint) for toleration in tolerations)


def readiness_taints(node: NodeAvailability) -> tuple[Taint, ...]:
    """The node's readiness taints of ours (keys under READINESS_TAINT_PREFIX): while it has
    one, the node is not verified yet (`nodesysctl.readiness`)."""
    return tuple(t for t in node.taints if t.key.startswith(READINESS_TAINT_PREFIX))


def agent_tolerations(
    spec: NodeSysctlPolicySpec, node: NodeAvailability = AVAILABLE
) -> tuple[Toleration, ...]:
    """Every toleration an agent pod of this policy carries on `node`: the policy's own, and
    the readiness taints of ours, exactly by key: the policy's (`spec.readiness`) and any other
    the node carries now. Without the second, two policies naming two keys on one node would
    each wait for the other's taint to go, forever."""
    keys = [t.key for t in readiness_taints(node)]
    if spec.readiness is not None:
        keys.insert(0, spec.readiness.key)
    readiness = tuple(
        Toleration(key=key, operator=TolerationOperator.EXISTS) for key in dict.fromkeys(keys)
    )
    return (*spec.job.tolerations, *AGENT_TOLERATIONS, *readiness)


def judge(node: NodeAvailability, tolerations: Sequence[Toleration]) -> Unavailable | None:
    """None if an agent pod with `tolerations` can run on the node now, else why not."""
    if node.ready != "True":
        return Unavailable(WaitReason.NOT_READY, ready=node.ready)
    if node.unschedulable and not tolerated(
        tolerations, Taint(UNSCHEDULABLE_TAINT_KEY, "", TaintEffect.NO_SCHEDULE)
    ):
        return Unavailable(WaitReason.CORDONED)
    for taint in node.taints:
        if not tolerated(tolerations, taint):
            return Unavailable(WaitReason.TAINT_NOT_TOLERATED, taint=taint)
    return None
