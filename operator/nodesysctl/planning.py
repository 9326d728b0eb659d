"""Pure rollout planning: which nodes to check next, and what the policy status says.

Everything here is a function of plain data (node facts, job facts, the parsed spec and the
clock), so the whole decision logic is unit-tested without a cluster. The reconcile pass
(`nodesysctl.reconcile`) gathers the facts, calls `plan_rollout`, and carries the plan out;
restart waves are planned in `nodesysctl.restarts`. Whether a node can run a check at all is
judged in `nodesysctl.availability`: a node that cannot gets no Job and is reported `Waiting`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from nodesysctl.api import MAX_WORST_NODES, NodeSysctlPolicySpec
from nodesysctl.availability import (
    AVAILABLE,
    NodeAvailability,
    Unavailable,
    agent_tolerations,
    judge,
)
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX

# Rechecks spread over this fraction of the interval so that a fleet checked together
# does not come due in the same second forever after.
RECHECK_JITTER_FRACTION = 0.1


class NodeState(StrEnum):
    """What the last check of a node said (the agent's status) or that none is current.

    `Waiting` is never stored on a Node: it is derived on every pass from the node's
    availability facts (a node that needs a check and cannot run one now)."""

    COMPLIANT = "Compliant"
    REMEDIATED = "Remediated"
    DRIFTED = "Drifted"
    FAILED = "Failed"
    PENDING = "Pending"
    WAITING = "Waiting"


class CheckReason(StrEnum):
    NEW = "NeverChecked"
    SPEC_CHANGED = "PolicyChanged"
    REBOOTED = "Rebooted"
    RECHECK_DUE = "RecheckDue"


@dataclasses.dataclass(frozen=True)
class NodeResult:
    """The last check result for one (policy, node), as stored in a Node annotation."""

    status: NodeState
    spec_hash: str
    boot_id: str
    checked_at: datetime
    job: str
    message: str = ""
    restart_pending: bool = False

    def to_annotation(self) -> str:
        return json.dumps(
            {
                "status": self.status.value,
                "specHash": self.spec_hash,
                "bootID": self.boot_id,
                "checkedAt": format_time(self.checked_at),
                "job": self.job,
                "message": self.message[:300],
                "restartPending": self.restart_pending,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    def as_stored(self) -> NodeResult:
        """This result exactly as it reads back from the annotation (times to the second,
        message cut), so what the operator remembers compares equal to what the watch echoes."""
        stored = NodeResult.from_annotation(self.to_annotation())
        assert stored is not None  # to_annotation always writes a readable value
        return stored

    @classmethod
    def from_annotation(cls, text: str) -> NodeResult | None:
        """Parse an annotation value; anything unreadable counts as "never checked"."""
        try:
            raw = json.loads(text)
            return cls(
                status=NodeState(raw["status"]),
                spec_hash=str(raw["specHash"]),
                boot_id=str(raw.get("bootID", "")),
                checked_at=parse_time(str(raw["checkedAt"])),
                job=str(raw.get("job", "")),
                message=str(raw.get("message", "")),
                restart_pending=bool(raw.get("restartPending", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    """What the operator needs to know about a Node; equal facts mean "nothing to do"."""

    name: str
    labels: Mapping[str, str]
    boot_id: str
    results: Mapping[str, NodeResult]  # by policy name
    # Ready condition, cordon, blocking taints (`nodesysctl.availability`).
    availability: NodeAvailability = AVAILABLE

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeFacts:
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        results = {}
        for key, value in annotations.items():
            if key.startswith(ANNOTATION_RESULT_PREFIX):
                parsed = NodeResult.from_annotation(value)
                if parsed is not None:
                    results[key.removeprefix(ANNOTATION_RESULT_PREFIX)] = parsed
        node_info = (body.get("status") or {}).get("nodeInfo") or {}
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            boot_id=str(node_info.get("bootID", "")),
            results=results,
            availability=NodeAvailability.from_body(body),
        )

    def with_result(self, policy: str, result: NodeResult | None) -> NodeFacts:
        """These facts with `result` as the policy's result (unchanged for None): what the
        Node says once a result just written is echoed back."""
        if result is None:
            return self
        return dataclasses.replace(self, results={**self.results, policy: result})


@dataclasses.dataclass(frozen=True)
class JobFacts:
    """One agent Job of a policy, as far as planning cares.

    `policy` and `node` are what its label and annotation claim. `owner_uid` is the uid of its
    controller ownerReference to a NodeSysctlPolicy ("" without one) and `uid` its own:
    `nodesysctl.results.verify_job` checks the claim against the first (a leftover of a deleted
    policy of the same name, or a Job made by hand, is not this policy's check), and an agent
    pod's controller ownerReference against the second.
    """

    name: str
    policy: str
    node: str
    spec_hash: str
    boot_id: str
    created_at: datetime
    active: int = 0  # its pods not yet finished (status.active): 0 while none could be created
    finished: bool = False
    succeeded: bool = False
    failure_reason: str = ""
    uid: str = ""
    owner_uid: str = ""


@dataclasses.dataclass(frozen=True)
class CheckOrder:
    node: str
    reason: CheckReason
    job_name: str
    boot_id: str


@dataclasses.dataclass(frozen=True)
class WorstNode:
    """A node not (yet) compliant, as ranked in `PolicySummary.worst`; the status shows it as
    an `api.WorstNodeStatus`."""

    name: str
    state: NodeState
    message: str


@dataclasses.dataclass(frozen=True)
class PolicySummary:
    nodes: int
    compliant: int
    drifted: int
    failed: int
    pending: int
    in_flight: int
    worst: tuple[WorstNode, ...]
    waiting: int = 0  # need a check and cannot run one now (never counted as failed)


@dataclasses.dataclass(frozen=True)
class RolloutPlan:
    """What the daemon should do now for one policy."""

    checks: tuple[CheckOrder, ...]
    stale_jobs: tuple[str, ...]  # in-flight jobs of an old spec or a vanished node: delete
    halted: bool
    summary: PolicySummary
    next_due_in: float | None  # seconds until the next recheck, None if nothing is scheduled


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def short_hash(*parts: str, length: int = 8) -> str:
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return digest[:length]


def spec_hash(spec: NodeSysctlPolicySpec) -> str:
    """Hash of everything that changes what a node check does or decides.

    Rollout pacing and restart settings are left out on purpose: editing them must not
    recheck the whole fleet.
    """
    relevant = {
        "ports": spec.ports.model_dump(mode="json", by_alias=True),
        "remediation": spec.remediation.model_dump(mode="json", by_alias=True),
        "image": spec.job.image,
    }
    return short_hash(json.dumps(relevant, sort_keys=True))


def job_name(policy: str, node: str, check_key: str) -> str:
    """Deterministic Job name for one check: a restarted operator derives the same name
    for the same pending check, so a second create gets AlreadyExists instead of a twin."""
    return f"nsc-{policy}-{short_hash(node, length=6)}-{short_hash(check_key, length=6)}"


def recheck_jitter(policy: str, node: str, interval: float) -> float:
    fraction = int(short_hash(policy, node), 16) / 16**8
    return fraction * RECHECK_JITTER_FRACTION * interval


def check_reason(
    node: NodeFacts,
    policy: str,
    current_spec_hash: str,
    now: datetime,
    recheck_seconds: float,
) -> tuple[CheckReason | None, float | None]:
    """Why this node needs a check now (None if it doesn't) and, if not, seconds until due."""
    result = node.results.get(policy)
    if result is None:
        return CheckReason.NEW, None
    if result.spec_hash != current_spec_hash:
        return CheckReason.SPEC_CHANGED, None
    if node.boot_id and result.boot_id != node.boot_id:
        return CheckReason.REBOOTED, None
    due = result.checked_at + timedelta(
        seconds=recheck_seconds + recheck_jitter(policy, node.name, recheck_seconds)
    )
    if now >= due:
        return CheckReason.RECHECK_DUE, None
    return None, (due - now).total_seconds()


def current_state(node: NodeFacts, policy: str, current_spec_hash: str) -> NodeState:
    result = node.results.get(policy)
    if result is None or result.spec_hash != current_spec_hash:
        return NodeState.PENDING
    if node.boot_id and result.boot_id != node.boot_id:
        return NodeState.PENDING
    return result.status


def unavailable(node: NodeFacts, spec: NodeSysctlPolicySpec) -> Unavailable | None:
    """Why this policy's agent pod cannot run on the node now (None if it can)."""
    return judge(node.availability, agent_tolerations(spec))


def reported_state(
    node: NodeFacts, policy: str, current_spec_hash: str, blocked: Unavailable | None
) -> tuple[NodeState, str]:
    """The state and message the status and `nodesysctl status` show for a node. A node with
    no current result that cannot run a check (`blocked`) is Waiting, with the reason; a node
    with a current result keeps it while unavailable (its kernel did not change)."""
    state = current_state(node, policy, current_spec_hash)
    if state == NodeState.PENDING:
        if blocked is not None:
            return NodeState.WAITING, blocked.message()
        return state, ""
    result = node.results.get(policy)
    return state, result.message if result else ""


_SEVERITY = {
    NodeState.FAILED: 0,
    NodeState.DRIFTED: 1,
    NodeState.WAITING: 2,
    NodeState.PENDING: 3,
    NodeState.REMEDIATED: 4,
    NodeState.COMPLIANT: 5,
}


def summarize(
    nodes: Sequence[NodeFacts],
    policy: str,
    current_spec_hash: str,
    in_flight: int,
    waiting: Mapping[str, Unavailable] | None = None,
) -> PolicySummary:
    """Counts and worst nodes; `waiting` holds the nodes that cannot run a check now and have
    none running, with the reason (see `reported_state`)."""
    blocked = waiting or {}
    counts = dict.fromkeys(NodeState, 0)
    ranked: list[WorstNode] = []
    for node in nodes:
        state, message = reported_state(node, policy, current_spec_hash, blocked.get(node.name))
        counts[state] += 1
        if state in (NodeState.FAILED, NodeState.DRIFTED, NodeState.WAITING, NodeState.PENDING):
            ranked.append(WorstNode(node.name, state, message))
    ranked.sort(key=lambda worst: (_SEVERITY[worst.state], worst.name))
    return PolicySummary(
        nodes=len(nodes),
        compliant=counts[NodeState.COMPLIANT] + counts[NodeState.REMEDIATED],
        drifted=counts[NodeState.DRIFTED],
        failed=counts[NodeState.FAILED],
        pending=counts[NodeState.PENDING],
        in_flight=in_flight,
        worst=tuple(ranked[:MAX_WORST_NODES]),
        waiting=counts[NodeState.WAITING],
    )


def select_nodes(
    spec: NodeSysctlPolicySpec, nodes: Iterable[NodeFacts], excluded: Iterable[str] = ()
) -> list[NodeFacts]:
    """Nodes the policy covers, minus those another policy takes precedence on."""
    skip = set(excluded)
    selected = [n for n in nodes if n.name not in skip and spec.node_selector.matches(n.labels)]
    return sorted(selected, key=lambda n: n.name)


def plan_rollout(
    *,
    policy: str,
    spec: NodeSysctlPolicySpec,
    nodes: Sequence[NodeFacts],
    jobs: Iterable[JobFacts],
    now: datetime,
) -> RolloutPlan:
    """Decide the next checks for one policy over its selected `nodes`.

    - at most `maxConcurrent` checks run at once (counting those already running);
    - once `maxFailedNodes` nodes have failed under the current spec, nothing new starts;
    - running checks for an old spec or for a node that left the selection are stale;
    - a node that cannot run the agent pod now (`unavailable`: not Ready, cordoned, a taint
      not tolerated) gets no check: it takes no slot, cannot fail, and waits for the node watch
      to wake the policy when its facts change. A check already running on a node that became
      unavailable is left alone: it finishes or hits its deadline.
    """
    current = spec_hash(spec)
    by_name = {node.name: node for node in nodes}
    running: dict[str, JobFacts] = {}
    stale: list[str] = []
    for job in jobs:
        if job.finished:
            continue
        if job.spec_hash != current or job.node not in by_name:
            stale.append(job.name)
        else:
            running[job.node] = job

    tolerations = agent_tolerations(spec)
    waiting = {
        node.name: blocked
        for node in nodes
        if node.name not in running and (blocked := judge(node.availability, tolerations))
    }
    summary = summarize(nodes, policy, current, in_flight=len(running), waiting=waiting)
    halted = summary.failed >= spec.rollout.max_failed_nodes
    budget = spec.rollout.max_concurrent_for(len(nodes)) - len(running)
    recheck_seconds = spec.rollout.recheck_interval_seconds()

    checks: list[CheckOrder] = []
    next_due: float | None = None
    for node in nodes:
        if node.name in running:
            continue
        reason, due_in = check_reason(node, policy, current, now, recheck_seconds)
        if reason is None:
            if due_in is not None:
                next_due = due_in if next_due is None else min(next_due, due_in)
            continue
        if node.name in waiting or halted or len(checks) >= budget:
            continue
        previous = node.results.get(policy)
        check_key = "|".join(
            [current, node.boot_id, format_time(previous.checked_at) if previous else "first"]
        )
        checks.append(
            CheckOrder(node.name, reason, job_name(policy, node.name, check_key), node.boot_id)
        )

    # Failed nodes first would burn the failure budget fastest; new and changed nodes first
    # gives the quickest coverage, so order by reason, then name (stable, testable).
    order = list(CheckReason)
    checks.sort(key=lambda c: (order.index(c.reason), c.node))
    return RolloutPlan(
        checks=tuple(checks),
        stale_jobs=tuple(sorted(stale)),
        halted=halted,
        summary=summary,
        next_due_in=next_due,
    )


def is_quiescent(plan: RolloutPlan) -> bool:
    """No check running or about to start (a halted rollout counts): the moment to restart
    the affected workloads once, for every node remediated so far."""
    return not plan.checks and plan.summary.in_flight == 0


def wants_restart(spec: NodeSysctlPolicySpec) -> bool:
    """Whether a remediated node waits for a restart wave (one that is only reported, too)."""
    return (
        spec.restart is not None
        and spec.restart.mode in ("OnRemediation", "Report")
        and spec.remediation.mode == "Enforce"
    )


@dataclasses.dataclass(frozen=True)
class PolicyRanges:
    """The node-facing part of a policy, for conflict detection between policies."""

    name: str
    created: str  # RFC 3339 creationTimestamp: the older policy wins a contested node
    spec: NodeSysctlPolicySpec


def incompatible(first: NodeSysctlPolicySpec, second: NodeSysctlPolicySpec) -> str:
    """Why two policies cannot both hold on one node ("" if they can)."""
    a, b = first.ports, second.ports
    if (
        first.remediation.narrow_range
        and second.remediation.narrow_range
        and (
            (a.ephemeral_range.min, a.ephemeral_range.max)
            != (b.ephemeral_range.min, b.ephemeral_range.max)
        )
    ):
        return (
            f"ephemeral ranges differ ({a.ephemeral_range.min}-{a.ephemeral_range.max} vs "
            f"{b.ephemeral_range.min}-{b.ephemeral_range.max}); each would rewrite the other"
        )
    for mine, theirs in ((first, second), (second, first)):
        if theirs.remediation.reserve_ports or not mine.remediation.narrow_range:
            continue  # reserved ports stay safe inside any range; an unnarrowed range is kept
        low, high = mine.ports.ephemeral_range.min, mine.ports.ephemeral_range.max
        for protected in theirs.ports.reserved_ranges():
            if protected.min <= high and low <= protected.max:
                return (
                    f"ephemeral range {low}-{high} covers ports {protected.min}-{protected.max} "
                    "that the other policy keeps out of the range without reserving them"
                )
    return ""


@dataclasses.dataclass(frozen=True)
class Conflict:
    node: str
    winner: str
    loser: str
    reason: str


def find_conflicts(policies: Sequence[PolicyRanges], nodes: Iterable[NodeFacts]) -> list[Conflict]:
    """Every (node, pair of policies) that select the node and cannot both hold on it.

    Precedence: the older policy (then the smaller name) keeps the node; the other skips it.
    """
    ordered = sorted(policies, key=lambda p: (p.created, p.name))
    conflicts: list[Conflict] = []
    for node in nodes:
        selecting = [p for p in ordered if p.spec.node_selector.matches(node.labels)]
        for index, winner in enumerate(selecting):
            for loser in selecting[index + 1 :]:
                reason = incompatible(winner.spec, loser.spec)
                if reason:
                    conflicts.append(Conflict(node.name, winner.name, loser.name, reason))
    return conflicts


def conflict_notes(conflicts: Iterable[Conflict], policy: str) -> tuple[str, ...]:
    """The conflicts `policy` takes part in, as sentences for its status and Events."""
    return tuple(
        f"node {c.node}: {c.winner} takes precedence over {c.loser} ({c.reason})"
        for c in conflicts
        if policy in (c.winner, c.loser)
    )


def selector_query(match_labels: Mapping[str, str], expressions: Iterable[Any]) -> str:
    """A LabelSelector as the `labelSelector=` query string the API server understands."""
    parts = [f"{key}={value}" for key, value in sorted(match_labels.items())]
    for expr in expressions:
        key, operator, values = expr.key, str(expr.operator), sorted(expr.values or [])
        if operator == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
