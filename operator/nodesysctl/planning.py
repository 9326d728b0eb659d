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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from nodesysctl.api import MAX_WORST_NODES, Mode, NodeSysctlPolicySpec
from nodesysctl.availability import (
    AVAILABLE,
    NodeAvailability,
    Taint,
    Unavailable,
    agent_tolerations,
    judge,
    readiness_taints,
)
from nodesysctl.compose import Conflict as Conflict
from nodesysctl.compose import NodeComposition, NodeTarget
from nodesysctl.compose import PolicyRanges as PolicyRanges
from nodesysctl.compose import conflict_notes as conflict_notes
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX

# Rechecks spread over this fraction of the interval so that a fleet checked together
# does not come due in the same second forever after.
RECHECK_JITTER_FRACTION = 0.1
# The agent spec's format, part of every spec hash: a new format (2: the composed per-node
# file replaces the per-policy files) rechecks every node once, which migrates it.
AGENT_FORMAT = 2


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
    # A check-only run outside the rollout window found drift: the window is open now.
    WINDOW_OPENED = "FixWindowOpened"
    # Not planned by `plan_rollout`: the check a deleted policy runs to clean its nodes
    # (`nodesysctl.cleanup`).
    DELETED = "PolicyDeleted"


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
    # The host directories that may hold a file nodesysctl wrote for this policy (its
    # sysctlDir when it last persisted): a changed sysctlDir, or a deletion, cleans them.
    # None: not known (a result written before results recorded it).
    sysctl_dirs: tuple[str, ...] | None = None
    # A check-only run (an Enforce policy outside its rollout window): the node is checked
    # again, fixing, once the window opens (`nodesysctl.maintenance`).
    fix_deferred: bool = False

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
            }
            | ({} if self.sysctl_dirs is None else {"sysctlDirs": list(self.sysctl_dirs)})
            | ({"fixDeferred": True} if self.fix_deferred else {}),
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
                sysctl_dirs=_dirs(raw.get("sysctlDirs")),
                fix_deferred=bool(raw.get("fixDeferred", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _dirs(value: Any) -> tuple[str, ...] | None:
    return tuple(str(d) for d in value) if isinstance(value, list) else None


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

    @property
    def readiness_taints(self) -> tuple[Taint, ...]:
        """The readiness taints of ours the node carries (keys under READINESS_TAINT_PREFIX,
        NoSchedule or NoExecute): while it has one, the node is not verified yet."""
        return readiness_taints(self.availability)

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
    remediated: int = 0  # of `compliant`: fixed by their last check (the metrics tell them apart)


@dataclasses.dataclass(frozen=True)
class RolloutPlan:
    """What the daemon should do now for one policy."""

    checks: tuple[CheckOrder, ...]
    stale_jobs: tuple[str, ...]  # in-flight jobs of an old spec or a vanished node: delete
    halted: bool
    summary: PolicySummary
    next_due_in: float | None  # seconds until the next recheck, None if nothing is scheduled
    # Nodes due for a check that another agent Job occupies (another policy's, or a stale one
    # of this policy still terminating): checked in a later pass, once it is gone. (Not
    # `Waiting` nodes: those cannot run a check at all, see `nodesysctl.availability`.)
    queued: tuple[str, ...] = ()


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
        "agent": AGENT_FORMAT,
    }
    return short_hash(json.dumps(relevant, sort_keys=True))


def node_spec_hash(
    policy: str, spec: NodeSysctlPolicySpec, composition: NodeComposition | None
) -> str:
    """The spec hash of `policy`'s checks of one node: what its results and Jobs there carry.

    An Enforce policy's check on a node carries the node's composed target
    (`nodesysctl.compose`), so the hash changes when another policy that composes there is
    added, removed or edited: the node is rechecked. Alone on a node, or in Audit mode (which
    checks only its own spec), the policy's own `spec_hash`.
    """
    own = spec_hash(spec)
    target = composition.target if composition is not None else None
    if spec.remediation.mode != Mode.ENFORCE or target is None or target.policies == (policy,):
        return own
    return short_hash(own, target.digest())


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
    may_fix: bool = True,
) -> tuple[CheckReason | None, float | None]:
    """Why this node needs a check now (None if it doesn't) and, if not, seconds until due.
    `may_fix`: whether a check of the node may fix it now (its rollout window is open)."""
    result = node.results.get(policy)
    if result is None:
        return CheckReason.NEW, None
    if result.spec_hash != current_spec_hash:
        return CheckReason.SPEC_CHANGED, None
    if node.boot_id and result.boot_id != node.boot_id:
        return CheckReason.REBOOTED, None
    if result.fix_deferred and may_fix:
        return CheckReason.WINDOW_OPENED, None
    if result.restart_pending:
        # Its restart wave is not done yet (a rate limit, the budget, a restart window days
        # away): a recheck would record a result without the pending restart, and the wave
        # would lose the node. A new spec or a boot is checked at once all the same.
        return None, None
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
    return judge(node.availability, agent_tolerations(spec, node.availability))


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
    node_hashes: Mapping[str, str] | None = None,
) -> PolicySummary:
    """Counts and worst nodes; `waiting` holds the nodes that cannot run a check now and have
    none running, with the reason (see `reported_state`); `node_hashes` overrides
    `current_spec_hash` per node."""
    blocked = waiting or {}
    hashes = node_hashes or {}
    counts = dict.fromkeys(NodeState, 0)
    ranked: list[WorstNode] = []
    for node in nodes:
        current = hashes.get(node.name, current_spec_hash)
        state, message = reported_state(node, policy, current, blocked.get(node.name))
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
        remediated=counts[NodeState.REMEDIATED],
    )


def dirs_after_check(
    previous: NodeResult | None, target: NodeTarget | None, state: NodeState
) -> tuple[str, ...] | None:
    """The `sysctl_dirs` a new result records: where files of ours may be after the check.

    An Enforce check (`target`: the node's composition) that succeeded left a file only in the
    target's directory, and only when persisting; one that failed may have left the earlier
    ones too. An Audit check (no target) writes nothing: what the previous result said stays.
    """
    if target is None:
        return previous.sysctl_dirs if previous is not None else ()
    kept = (previous.sysctl_dirs or ()) if previous is not None else ()
    wanted = (target.sysctl_dir,) if target.persist else ()
    if state in (NodeState.COMPLIANT, NodeState.REMEDIATED):
        return wanted
    return tuple(dict.fromkeys([*kept, *wanted]))


@dataclasses.dataclass(frozen=True)
class HostDirs:
    """The host sysctl directories an Enforce check of one node opens (`host_dirs`)."""

    sysctl_dir: str
    mounted: bool  # the target's directory: it persists there, or may have to remove a file
    clean: tuple[str, ...] = ()  # other directories that may hold a file of ours


def host_dirs(node: NodeFacts, target: NodeTarget) -> HostDirs:
    """Which directories a check applying `target` on `node` opens: the target's sysctlDir when
    it persists there, or when a file of ours may be there to remove (a result on the node
    records it, or predates that record: an earlier version's per-policy file); and the other
    directories results on the node record, to remove nodesysctl's files from them."""
    recorded = [result.sysctl_dirs for result in node.results.values()]
    known = dict.fromkeys(d for dirs in recorded if dirs for d in dirs)
    unknown = any(dirs is None for dirs in recorded)
    mounted = target.persist or unknown or target.sysctl_dir in known
    return HostDirs(
        target.sysctl_dir, mounted, tuple(sorted(d for d in known if d != target.sysctl_dir))
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
    node_hashes: Mapping[str, str] | None = None,
    busy: Collection[str] = (),
    may_fix: Callable[[str], bool] | None = None,
) -> RolloutPlan:
    """Decide the next checks for one policy over its selected `nodes`.

    - at most `maxConcurrent` checks run at once (counting those already running);
    - once `maxFailedNodes` nodes have failed under the current spec, nothing new starts;
    - running checks for an old spec or for a node that left the selection are stale;
    - a node that cannot run the agent pod now (`unavailable`: not Ready, cordoned, a taint
      not tolerated) gets no check: it takes no slot, cannot fail, and waits for the node watch
      to wake the policy when its facts change. A check already running on a node that became
      unavailable is left alone: it finishes or hits its deadline.
    - at most one agent Job runs on a node: a node in `busy` (another policy's Job runs there)
      or with a stale Job of this policy still around is not checked now (`queued`).

    `node_hashes`: the spec hash of each node's check (`node_spec_hash`); `spec_hash(spec)`
    for a node not in it. `may_fix`: whether a check of a node may fix it now
    (`nodesysctl.maintenance`; always, when None): a node whose last check ran check-only is
    checked again once it may.
    """
    default = spec_hash(spec)
    hashes = node_hashes or {}
    by_name = {node.name: node for node in nodes}
    running: dict[str, JobFacts] = {}
    stale: list[str] = []
    occupied = set(busy)
    for job in jobs:
        if job.finished:
            continue
        if job.node not in by_name or job.spec_hash != hashes.get(job.node, default):
            stale.append(job.name)
            occupied.add(job.node)  # until it is gone: its agent may still be running
        else:
            running[job.node] = job

    waiting = {
        node.name: blocked
        for node in nodes
        if node.name not in running and (blocked := unavailable(node, spec))
    }
    summary = summarize(
        nodes, policy, default, in_flight=len(running), waiting=waiting, node_hashes=hashes
    )
    halted = summary.failed >= spec.rollout.max_failed_nodes
    budget = spec.rollout.max_concurrent_for(len(nodes)) - len(running)
    recheck_seconds = spec.rollout.recheck_interval_seconds()

    checks: list[CheckOrder] = []
    queued: list[str] = []
    next_due: float | None = None
    for node in nodes:
        if node.name in running:
            continue
        current = hashes.get(node.name, default)
        fixing = may_fix is None or may_fix(node.name)
        reason, due_in = check_reason(node, policy, current, now, recheck_seconds, fixing)
        if reason is None:
            if due_in is not None:
                next_due = due_in if next_due is None else min(next_due, due_in)
            continue
        if node.name in waiting or halted:
            continue
        if node.name in occupied:
            queued.append(node.name)
            continue
        if len(checks) >= budget:
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
        queued=tuple(queued),
    )


def is_quiescent(plan: RolloutPlan) -> bool:
    """No check running, about to start or waiting for a node (a halted rollout counts): the
    moment to restart the affected workloads once, for every node remediated so far."""
    return not plan.checks and not plan.queued and plan.summary.in_flight == 0


def wants_restart(spec: NodeSysctlPolicySpec) -> bool:
    """Whether a remediated node waits for a restart wave (one that is only reported, too)."""
    return (
        spec.restart is not None
        and spec.restart.mode in ("OnRemediation", "Report")
        and spec.remediation.mode == "Enforce"
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
