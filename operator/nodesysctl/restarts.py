"""Restart waves, decided on plain data: which remediated nodes wait for workload restarts, which
pods the fault touched, whose they are, and what a wave does with each workload.

Who is affected by a node's widened `ip_local_port_range`: only processes in the node's host
network namespace. The range (and `ip_local_reserved_ports`) is per network namespace, and a new
namespace starts from the kernel defaults (`inet_init_net`), whatever the host has, so a pod with
its own network namespace never saw the node's range. By default (`spec.restart.pods:
HostNetwork`) only `hostNetwork: true` pods count; `All` counts every pod on the node.

A pod is affected only if it started before its node was remediated (the result's `checkedAt`):
the pods that replace it start later, so a restarted operator, or a standby that took over, never
restarts a workload twice for one remediation.

Each affected pod is resolved to its workload by ownership (Pod -> ReplicaSet -> Deployment,
Pod -> StatefulSet, Pod -> DaemonSet: the controller ownerReference), never by selector
overlap. The policy's `kinds`, `namespaces` and `selector` then say which workloads may be
restarted; system namespaces only when named. Deployments and StatefulSets get a rollout
restart (the pod-template annotations), a DaemonSet only an eviction of its pod on the
remediated node (the Eviction API, so PodDisruptionBudgets apply). Bare pods, static pods and
pods of other owners are reported, never deleted.

The reconcile pass lists the pods and the ReplicaSets once per wave (`resolve_owners` says
which workloads to read), reads those workloads, asks `plan_restart_wave`, and keeps the plan
until the wave is complete; `WaveProgress` is what it has done so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from nodesysctl.api import MAX_LISTED_STEPS, RestartPods, RestartSpec
from nodesysctl.labels import RESTART_WAVE, RESTARTED_AT
from nodesysctl.planning import NodeFacts, NodeResult, format_time, parse_time, short_hash

MAX_LISTED_WORKLOADS = 10  # in status.lastRestart.workloads; `count` has the total
# Never restarted unless `spec.restart.namespaces` names them (besides the operator's own and
# the job namespace, which the pass adds).
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
# A refused eviction (429: a PodDisruptionBudget) is tried this many times, this far apart,
# then reported as blocked and left out of the wave.
MAX_EVICTION_ATTEMPTS = 5
EVICTION_RETRY_SECONDS = 10.0
POD_NETWORK_NOTE = (
    "only hostNetwork pods are affected: a pod with its own network namespace never had the "
    "node's ip_local_port_range (a new namespace starts from the kernel defaults)"
)


def restart_wave(nodes: Iterable[NodeFacts], policy: str) -> tuple[str, tuple[str, ...]]:
    """The remediated nodes still waiting for workload restarts, and a stable wave id.

    The id is derived from which checks remediated which nodes, so an operator that restarts
    mid-wave computes the same id and skips the workloads it already restarted.
    """
    pending = sorted(
        (node.name, result.job)
        for node in nodes
        if (result := node.results.get(policy)) is not None and result.restart_pending
    )
    if not pending:
        return "", ()
    wave = short_hash(policy, *(f"{name}={job}" for name, job in pending), length=12)
    return wave, tuple(name for name, _ in pending)


def remediated_at(nodes: Iterable[NodeFacts], policy: str) -> dict[str, datetime]:
    """When each node waiting for restarts was remediated (its result's check time)."""
    return {
        node.name: result.checked_at
        for node in nodes
        if (result := node.results.get(policy)) is not None and result.restart_pending
    }


def restarts_done(nodes: Iterable[NodeFacts], policy: str) -> dict[str, NodeResult]:
    """Once a wave is complete: each waiting node's result with the wait over, as stored."""
    return {
        node.name: dataclasses.replace(result, restart_pending=False).as_stored()
        for node in nodes
        if (result := node.results.get(policy)) is not None and result.restart_pending
    }


class RestartAction(StrEnum):
    RESTART = "Restart"  # rollout restart: Deployment, StatefulSet
    EVICT = "Evict"  # a DaemonSet's pod on a remediated node
    ALREADY_DONE = "AlreadyDone"  # stamped with this wave, or restarted since the remediation
    SKIP_PAUSED = "SkipPaused"  # a paused Deployment refuses a rollout restart
    EVICTION_BLOCKED = "EvictionBlocked"  # refused (a PDB) every time it was tried
    NOT_RESTARTABLE = "NotRestartable"  # a bare or static pod, or an owner that is no workload
    NOT_SELECTED = "NotSelected"  # kinds, namespaces, selector or a system namespace


class EvictionResult(StrEnum):
    EVICTED = "Evicted"
    BLOCKED = "Blocked"  # 429: a PodDisruptionBudget does not allow it (now)
    GONE = "Gone"  # the pod is gone, or another pod has its name now


# What the pass carries out (the rest is reported).
WRITES = (RestartAction.RESTART, RestartAction.EVICT)


@dataclasses.dataclass(frozen=True)
class WorkloadRef:
    kind: str
    namespace: str
    name: str
    uid: str = ""

    @property
    def ident(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class AffectedPod:
    namespace: str
    name: str
    uid: str
    node: str
    started: datetime
    owner: Mapping[str, Any] | None  # the controller ownerReference, if any

    @property
    def ident(self) -> str:
        return f"Pod/{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class WorkloadStep:
    action: RestartAction
    kind: str
    namespace: str
    name: str
    uid: str
    reason: str = ""
    pod: str = ""  # the DaemonSet pod to evict (or the pod reported)
    pod_uid: str = ""
    node: str = ""

    @property
    def ident(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.kind, self.namespace, self.name, self.pod)

    def as_status(self) -> dict[str, str]:
        return {"workload": self.ident, "action": self.action.value, "reason": self.reason[:500]}


def _started(pod: Mapping[str, Any]) -> datetime | None:
    text = (pod.get("status") or {}).get("startTime") or pod["metadata"].get("creationTimestamp")
    try:
        return parse_time(str(text)) if text else None
    except ValueError:
        return None


def _controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def affected_pods(
    pods: Iterable[Mapping[str, Any]],
    remediated: Mapping[str, datetime],
    scope: RestartPods,
    ignored_namespaces: Iterable[str] = (),
) -> list[AffectedPod]:
    """The listed pods the wave is about: on a node of the wave (`remediated`: node -> when),
    started before that, not finished or terminating, and host-network unless `scope` is All.
    Pods in `ignored_namespaces` (the job namespace: our own agent pods) never count."""
    ignored = set(ignored_namespaces)
    found = []
    for pod in pods:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        node = spec.get("nodeName") or ""
        if node not in remediated or meta.get("namespace") in ignored:
            continue
        if scope == RestartPods.HOST_NETWORK and not spec.get("hostNetwork"):
            continue
        if meta.get("deletionTimestamp"):
            continue  # going already (an eviction of an earlier pass)
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        started = _started(pod)
        if started is None or started >= remediated[node]:
            continue  # started with the node's range fixed: a replacement, or new
        found.append(
            AffectedPod(
                namespace=str(meta.get("namespace", "")),
                name=str(meta.get("name", "")),
                uid=str(meta.get("uid", "")),
                node=node,
                started=started,
                owner=_controller(meta),
            )
        )
    return sorted(found, key=lambda p: (p.namespace, p.name))


def needs_replica_sets(pods: Iterable[AffectedPod]) -> bool:
    """Whether any affected pod belongs to a ReplicaSet (else the pass need not list them)."""
    return any(pod.owner is not None and pod.owner.get("kind") == "ReplicaSet" for pod in pods)


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The affected pods by workload (to read, then plan), and what is left out already."""

    workloads: Mapping[WorkloadRef, tuple[AffectedPod, ...]]
    left: tuple[WorkloadStep, ...]


def _left(action: RestartAction, ref: WorkloadRef, reason: str, pod: str = "") -> WorkloadStep:
    return WorkloadStep(action, ref.kind, ref.namespace, ref.name, ref.uid, reason, pod=pod)


def _owner_of(pod: AffectedPod, replica_sets: Mapping[str, Mapping[str, Any]]) -> WorkloadRef | str:
    """The workload a pod belongs to, or why it has none nodesysctl can restart."""
    owner = pod.owner
    if owner is None:
        return "a bare pod (no controller): never deleted; restart it by hand"
    kind, name, uid = str(owner.get("kind")), str(owner.get("name")), str(owner.get("uid"))
    if kind == "Node":
        return (
            f"a static pod of node {name} (a mirror pod): the API cannot restart it; restart "
            "it on the node"
        )
    if kind in ("StatefulSet", "DaemonSet") and str(owner.get("apiVersion")) == "apps/v1":
        return WorkloadRef(kind, pod.namespace, name, uid)
    if kind == "ReplicaSet":
        replica_set = replica_sets.get(uid)
        if replica_set is None:
            return f"its ReplicaSet {name} was not found"
        deployment = _controller(replica_set["metadata"])
        if deployment is None or deployment.get("kind") != "Deployment":
            return f"its ReplicaSet {name} has no Deployment: nodesysctl restarts Deployments"
        return WorkloadRef(
            "Deployment", pod.namespace, str(deployment.get("name")), str(deployment.get("uid"))
        )
    return f"owned by {kind} {name}, not a Deployment, StatefulSet or DaemonSet"


def resolve_owners(
    pods: Sequence[AffectedPod],
    replica_sets: Iterable[Mapping[str, Any]],
    restart: RestartSpec,
    protected_namespaces: Iterable[str] = (),
) -> Resolution:
    """Each affected pod's workload by ownership, filtered by the policy's kinds and namespaces
    (the selector needs the workload's labels: `plan_restart_wave`). `protected_namespaces`
    (the operator's own) join SYSTEM_NAMESPACES: never restarted unless named."""
    by_uid = {str(rs["metadata"].get("uid")): rs for rs in replica_sets}
    kinds = [str(kind) for kind in restart.kinds]
    named = set(restart.namespaces)
    protected = set(SYSTEM_NAMESPACES) | set(protected_namespaces)
    workloads: dict[WorkloadRef, list[AffectedPod]] = {}
    left: dict[tuple[str, ...], WorkloadStep] = {}
    for pod in pods:
        owner = _owner_of(pod, by_uid)
        if isinstance(owner, str):
            ref = WorkloadRef("Pod", pod.namespace, pod.name, pod.uid)
            left[("Pod", pod.namespace, pod.name)] = _left(
                RestartAction.NOT_RESTARTABLE, ref, f"{owner} (on node {pod.node})", pod.name
            )
            continue
        why = ""
        if owner.kind not in kinds:
            why = f"kind {owner.kind} is not in spec.restart.kinds"
        elif named and pod.namespace not in named:
            why = f"namespace {pod.namespace} is not in spec.restart.namespaces"
        elif not named and pod.namespace in protected:
            why = (
                f"{pod.namespace} is a system namespace: restarted only when spec.restart."
                "namespaces names it"
            )
        if why:
            left[(owner.kind, owner.namespace, owner.name)] = _left(
                RestartAction.NOT_SELECTED, owner, why
            )
            continue
        workloads.setdefault(owner, []).append(pod)
    return Resolution(
        workloads={ref: tuple(found) for ref, found in workloads.items()},
        left=tuple(left[key] for key in sorted(left)),
    )


def _restarted_since(template_annotations: Mapping[str, Any], moment: datetime) -> bool:
    text = template_annotations.get(RESTARTED_AT)
    if not text:
        return False
    try:
        return parse_time(str(text)) >= moment
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class RestartPlan:
    """One wave: a step for each affected workload (an eviction step for each affected
    DaemonSet pod), in the order to carry out, then what is left out and why."""

    wave: str
    nodes: tuple[str, ...]
    steps: tuple[WorkloadStep, ...]

    def _with(self, action: RestartAction) -> tuple[WorkloadStep, ...]:
        return tuple(step for step in self.steps if step.action == action)

    @property
    def to_restart(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.RESTART)

    @property
    def to_evict(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.EVICT)

    @property
    def writes(self) -> tuple[WorkloadStep, ...]:
        return tuple(step for step in self.steps if step.action in WRITES)

    @property
    def already_done(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.ALREADY_DONE)

    @property
    def skipped_paused(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.SKIP_PAUSED)


def plan_restart_wave(
    *,
    wave: str,
    nodes: Sequence[str],
    remediated: Mapping[str, datetime],
    resolution: Resolution,
    bodies: Mapping[WorkloadRef, Mapping[str, Any] | None],
    restart: RestartSpec,
) -> RestartPlan:
    """What wave `wave` does with each resolved workload, from its body as read (`bodies`;
    None: gone meanwhile). The steps come in the order the policy names the kinds, then by
    namespace and name (a DaemonSet's evictions by node); the left-out ones follow.

    A workload stamped with the wave id, or restarted (`restartedAt`) since the last of its
    nodes was remediated, is done, even when it is paused now.
    """
    kinds = [str(kind) for kind in restart.kinds]
    steps: list[WorkloadStep] = []
    left: list[WorkloadStep] = list(resolution.left)
    for ref in sorted(
        resolution.workloads, key=lambda r: (kinds.index(r.kind), r.namespace, r.name)
    ):
        pods = resolution.workloads[ref]
        body = bodies.get(ref)
        if body is None:
            left.append(_left(RestartAction.NOT_RESTARTABLE, ref, "not found (deleted meanwhile)"))
            continue
        labels = body["metadata"].get("labels") or {}
        if not restart.selector.matches(labels):
            left.append(
                _left(
                    RestartAction.NOT_SELECTED, ref, "its labels do not match spec.restart.selector"
                )
            )
            continue
        if ref.kind == "DaemonSet":
            for pod in sorted(pods, key=lambda p: (p.node, p.name)):
                steps.append(
                    WorkloadStep(
                        RestartAction.EVICT,
                        ref.kind,
                        ref.namespace,
                        ref.name,
                        ref.uid,
                        f"evict pod {pod.name} on node {pod.node} (only that node's pod)",
                        pod=pod.name,
                        pod_uid=pod.uid,
                        node=pod.node,
                    )
                )
            continue
        spec = body.get("spec") or {}
        template_annotations = (spec.get("template") or {}).get("metadata", {}).get(
            "annotations"
        ) or {}
        latest = max(remediated[pod.node] for pod in pods)
        on = sorted({pod.node for pod in pods})
        where = (
            f"hostNetwork pod on node {', '.join(on[:3])}"
            if restart.pods == RestartPods.HOST_NETWORK
            else f"pod on node {', '.join(on[:3])}"
        )
        if template_annotations.get(RESTART_WAVE) == wave:
            action, reason = RestartAction.ALREADY_DONE, "restarted by this wave already"
        elif _restarted_since(template_annotations, latest):
            action, reason = RestartAction.ALREADY_DONE, "restarted since its node was remediated"
        elif ref.kind == "Deployment" and spec.get("paused"):
            action, reason = (
                RestartAction.SKIP_PAUSED,
                "paused: a paused Deployment refuses a rollout restart; resume it and restart "
                "by hand",
            )
        else:
            action, reason = (
                RestartAction.RESTART,
                f"rollout restart: {where} started before the fix",
            )
        steps.append(WorkloadStep(action, ref.kind, ref.namespace, ref.name, ref.uid, reason))
    return RestartPlan(wave=wave, nodes=tuple(nodes), steps=tuple(steps + left))


@dataclasses.dataclass(frozen=True)
class WaveProgress:
    """What the pass has done of a kept plan: the writes done, the evictions refused so far
    (attempts and when to try again), and those refused for good (with the API's reason)."""

    done: frozenset[tuple[str, str, str, str]] = frozenset()
    attempts: Mapping[tuple[str, str, str, str], int] = dataclasses.field(default_factory=dict)
    retry_at: Mapping[tuple[str, str, str, str], datetime] = dataclasses.field(default_factory=dict)
    blocked: Mapping[tuple[str, str, str, str], str] = dataclasses.field(default_factory=dict)

    def open_steps(self, plan: RestartPlan) -> list[WorkloadStep]:
        """The writes neither done nor blocked for good."""
        return [s for s in plan.writes if s.key not in self.done and s.key not in self.blocked]

    def fresh(self, plan: RestartPlan) -> list[WorkloadStep]:
        """Open writes never tried (each takes a token)."""
        return [s for s in self.open_steps(plan) if s.key not in self.attempts]

    def retries_due(self, plan: RestartPlan, now: datetime) -> list[WorkloadStep]:
        """Refused evictions due for another try (no token: nothing was disrupted)."""
        return [
            s
            for s in self.open_steps(plan)
            if s.key in self.attempts and self.retry_at.get(s.key, now) <= now
        ]

    def next_retry_in(self, plan: RestartPlan, now: datetime) -> float | None:
        waits = [
            (self.retry_at[s.key] - now).total_seconds()
            for s in self.open_steps(plan)
            if s.key in self.retry_at
        ]
        return max(0.0, min(waits)) if waits else None

    def with_done(self, step: WorkloadStep) -> WaveProgress:
        return dataclasses.replace(self, done=self.done | {step.key})

    def with_refusal(self, step: WorkloadStep, reason: str, now: datetime) -> WaveProgress:
        """One more refused eviction: retried later, or blocked for good after the last try."""
        tries = self.attempts.get(step.key, 0) + 1
        attempts = {**self.attempts, step.key: tries}
        if tries >= MAX_EVICTION_ATTEMPTS:
            return dataclasses.replace(
                self, attempts=attempts, blocked={**self.blocked, step.key: reason}
            )
        retry = now + timedelta(seconds=EVICTION_RETRY_SECONDS)
        return dataclasses.replace(
            self, attempts=attempts, retry_at={**self.retry_at, step.key: retry}
        )

    def complete(self, plan: RestartPlan) -> bool:
        return not self.open_steps(plan)

    def outcome(self, step: WorkloadStep) -> WorkloadStep:
        """The step as it stands: a blocked eviction as EvictionBlocked with the API's reason."""
        reason = self.blocked.get(step.key)
        if reason is None:
            return step
        return dataclasses.replace(
            step,
            action=RestartAction.EVICTION_BLOCKED,
            reason=f"pod {step.pod} on node {step.node}: eviction refused "
            f"{self.attempts.get(step.key, 0)} times ({reason})",
        )


def _counts(steps: Iterable[WorkloadStep]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for step in steps:
        counts[step.action.value] = counts.get(step.action.value, 0) + 1
    return counts


def wave_status(plan: RestartPlan, progress: WaveProgress, mode: str) -> dict[str, Any]:
    """`status.restartWave`: the wave being carried out (or only reported), step by step,
    the open writes first."""
    steps = [progress.outcome(step) for step in plan.steps]
    open_keys = {s.key for s in progress.open_steps(plan)}
    ordered = [s for s in steps if s.key in open_keys] + [
        s for s in steps if s.key not in open_keys
    ]
    return {
        "wave": plan.wave,
        "mode": mode,
        "nodes": len(plan.nodes),
        "remaining": len(open_keys),
        "counts": _counts(steps),
        "steps": [s.as_status() for s in ordered[:MAX_LISTED_STEPS]],
    }


def last_restart(
    plan: RestartPlan, progress: WaveProgress, now: datetime, *, report: bool = False
) -> dict[str, Any]:
    """The policy's `status.lastRestart` once the wave is complete (or, `report`, planned)."""
    steps = [progress.outcome(step) for step in plan.steps]
    restarted = sorted(
        {
            step.ident
            for step in steps
            if step.action
            in (RestartAction.RESTART, RestartAction.EVICT, RestartAction.ALREADY_DONE)
        }
    )
    ordered_restarted = [s.ident for s in steps if s.ident in restarted]
    unique = list(dict.fromkeys(ordered_restarted))
    left = [
        s
        for s in steps
        if s.action not in (RestartAction.RESTART, RestartAction.EVICT, RestartAction.ALREADY_DONE)
    ]
    return {
        "wave": plan.wave,
        "at": format_time(now),
        "nodes": len(plan.nodes),
        "workloads": unique[:MAX_LISTED_WORKLOADS],
        "count": len(unique),
        "evicted": sum(1 for s in steps if s.action == RestartAction.EVICT),
        "report": report,
        "notRestarted": [s.as_status() for s in left[:MAX_LISTED_STEPS]],
    }


def wave_summary(
    plan: RestartPlan, progress: WaveProgress, scope: RestartPods, *, report: bool
) -> str:
    """One sentence for the policy's Event when a wave is complete (or reported)."""
    steps = [progress.outcome(step) for step in plan.steps]
    counts = _counts(steps)
    verb = "would restart" if report else "restarted"
    parts = [
        f"restart wave {plan.wave} over {len(plan.nodes)} nodes: {verb} "
        f"{counts.get('Restart', 0)} workloads, "
        f"{'would evict' if report else 'evicted'} {counts.get('Evict', 0)} DaemonSet pods",
    ]
    others = {k: v for k, v in counts.items() if k not in ("Restart", "Evict")}
    if others:
        parts.append("; " + ", ".join(f"{v} {k}" for k, v in sorted(others.items())))
    note = f"; {POD_NETWORK_NOTE}" if scope == RestartPods.HOST_NETWORK else ""
    return "".join(parts) + note
