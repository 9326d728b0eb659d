"""Readiness taints: which of our taints to take off a node, or put back on it.

A node registers with a taint under `labels.READINESS_TAINT_PREFIX` (kubelet
`--register-with-taints`, a node pool's taints, Karpenter `startupTaints`), so nothing that
does not tolerate it lands there; a policy that names the taint (`spec.readiness`) clears it
once the node is verified. The pattern is Cilium's `node.cilium.io/agent-not-ready`.

The rules, each the narrower action:
- A taint (key and effect; its value does not matter) comes off a node once every policy that
  selects the node and names that taint has a Compliant or Remediated result for its current
  check hash and the node's current boot. A failed, drifted, stale or missing result keeps it.
- Nothing is ever added to a node that did not register with the taint, except with
  `retaintOnReboot`: a node the policy checked in an earlier boot gets it back, NoSchedule
  only (pods already bound come back with the node; NoExecute would evict every pod without a
  toleration), until the recheck of the new boot passes.
- When the last policy naming a taint is deleted or stops selecting a node it had checked, the
  taint comes off (`release`): a node never stays blocked by a policy that no longer exists.
  A taint no policy ever named on that node is left alone (the node may be waiting for a
  policy not applied yet).
- Any other taint is never touched (`edit_taints` keeps the rest of the list as it is).

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from nodesysctl.api import NodeSysctlPolicySpec, TaintEffect
from nodesysctl.availability import Taint
from nodesysctl.compose import NodeComposition, PolicyRanges
from nodesysctl.planning import NodeFacts, NodeState, node_spec_hash

VERIFIED_STATES = frozenset({NodeState.COMPLIANT, NodeState.REMEDIATED})
# The only effect put back on a rebooted node (see the module docstring).
RESTORED_EFFECT = TaintEffect.NO_SCHEDULE


class ReadinessAction(StrEnum):
    REMOVE = "Remove"  # verified by every policy naming the taint, or no such policy left
    RESTORE = "Restore"  # booted again with retaintOnReboot: NoSchedule until the recheck
    KEEP = "Keep"  # a policy naming the taint has not verified the node (the reason says who)


@dataclasses.dataclass(frozen=True)
class ReadinessDecision:
    """What to do with one taint of ours on one node, and why (for the log and the Event)."""

    node: str
    taint: Taint  # key and effect; the value is not compared
    action: ReadinessAction
    reason: str


def policy_taint(spec: NodeSysctlPolicySpec) -> Taint | None:
    """The taint a policy clears, or None when it names none."""
    if spec.readiness is None:
        return None
    return Taint(spec.readiness.key, "", TaintEffect(spec.readiness.effect))


def _same(a: Taint, b: Taint) -> bool:
    return a.key == b.key and a.effect == b.effect


def carries(node: NodeFacts, taint: Taint) -> bool:
    """Whether the node has the taint (key and effect, any value)."""
    return any(_same(taint, seen) for seen in node.availability.taints)


def unverified_because(
    policy: str, spec: NodeSysctlPolicySpec, node: NodeFacts, composition: NodeComposition | None
) -> str | None:
    """None when `policy` verified the node for its current spec and boot, else why not."""
    result = node.results.get(policy)
    if result is None:
        return f"{policy} has not checked the node yet"
    if result.boot_id != node.boot_id:
        return f"{policy} has not checked the node since it booted (boot ID {node.boot_id})"
    if result.spec_hash != node_spec_hash(policy, spec, composition):
        return f"{policy} has not checked the node against its current spec"
    if result.status not in VERIFIED_STATES:
        detail = f": {result.message}" if result.message else ""
        return f"{policy} found the node {result.status}{detail}"
    return None


def _naming(taint: Taint, node: NodeFacts, policies: Iterable[PolicyRanges]) -> list[PolicyRanges]:
    named = [(p, policy_taint(p.spec)) for p in policies]
    return [
        p
        for p, t in named
        if t is not None and _same(t, taint) and p.spec.node_selector.matches(node.labels)
    ]


def decide(
    policy: PolicyRanges,
    node: NodeFacts,
    policies: Sequence[PolicyRanges],
    composition: NodeComposition | None,
) -> ReadinessDecision | None:
    """What `policy`'s pass does with its taint on a node it selects; None: nothing.

    `policies`: every valid policy (this one included), for the others that name the same
    taint and select the node; `composition`: the node's, for their check hashes."""
    taint = policy_taint(policy.spec)
    if taint is None or not policy.spec.node_selector.matches(node.labels):
        return None
    if carries(node, taint):
        naming = _naming(taint, node, [policy, *(p for p in policies if p.name != policy.name)])
        for other in naming:
            why = unverified_because(other.name, other.spec, node, composition)
            if why is not None:
                return ReadinessDecision(node.name, taint, ReadinessAction.KEEP, why)
        names = ", ".join(sorted(p.name for p in naming))
        return ReadinessDecision(
            node.name,
            taint,
            ReadinessAction.REMOVE,
            f"verified by {names} for boot ID {node.boot_id}",
        )
    readiness = policy.spec.readiness
    assert readiness is not None  # policy_taint returned a taint
    earlier = node.results.get(policy.name)
    if readiness.retaint_on_reboot and earlier and earlier.boot_id not in ("", node.boot_id):
        restored = Taint(taint.key, "", RESTORED_EFFECT)
        return ReadinessDecision(
            node.name,
            restored,
            ReadinessAction.RESTORE,
            f"the node booted again (boot ID {earlier.boot_id} -> {node.boot_id}); "
            f"{policy.name} rechecks it before workloads land",
        )
    return None


def release(
    former: PolicyRanges, node: NodeFacts, remaining: Iterable[PolicyRanges], why: str
) -> ReadinessDecision | None:
    """The taint of a policy that was deleted or no longer selects a node it checked comes
    off, unless a remaining policy that selects the node names it too (whose pass decides)."""
    taint = policy_taint(former.spec)
    if taint is None or not carries(node, taint):
        return None
    others = [p for p in remaining if p.name != former.name]
    if _naming(taint, node, others):
        return None
    return ReadinessDecision(
        node.name,
        taint,
        ReadinessAction.REMOVE,
        f"{former.name} {why}, and no other policy that selects the node names this taint",
    )


def edit_taints(
    taints: Sequence[Mapping[str, Any]], decision: ReadinessDecision
) -> list[dict[str, Any]] | None:
    """The node's `spec.taints` after the decision, every other taint as it was; None when
    the list would not change (already done, or nothing to do)."""
    current = [dict(t) for t in taints]

    def matches(raw: Mapping[str, Any]) -> bool:
        return raw.get("key") == decision.taint.key and raw.get("effect") == decision.taint.effect

    match decision.action:
        case ReadinessAction.REMOVE:
            kept = [t for t in current if not matches(t)]
            return kept if len(kept) != len(current) else None
        case ReadinessAction.RESTORE:
            if any(matches(t) for t in current):
                return None
            return [*current, {"key": decision.taint.key, "effect": str(decision.taint.effect)}]
        case ReadinessAction.KEEP:
            return None


def build_taints_patch(
    resource_version: str, taints: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """A JSON patch that replaces `spec.taints` only if the Node is still at
    `resource_version`: a merge patch would replace the whole list and race the node's other
    writers (the kubelet, the node lifecycle controller, autoscalers)."""
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "add", "path": "/spec/taints", "value": [dict(t) for t in taints]},
    ]
