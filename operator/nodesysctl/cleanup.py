"""Deletion cleans the node: the checks a deleted policy runs before its finalizer goes.

Pure: plain facts in, a plan out; `nodesysctl.deletion` carries it out from the Kopf delete
handler, which calls it again (`kopf.TemporaryError`) until the plan is done.

A policy leaves a file behind on every node it persisted on, and the kernel keeps its values
whoever set them. So deleting a policy runs one check on every node that carries its result:
the composition of the Enforce policies that remain there (`nodesysctl.compose`), which
rewrites the node's `zz-nodesysctl.conf` for them, or removes it (and any per-policy file of an
earlier version) when none of them persists, and removes nodesysctl's files from the other
directories the node's results record. The kernel's values stay as they are: nodesysctl never
knows what the range was before a policy narrowed it (docs/operations.md). Nobody else's file
is touched (the agent removes only regular files that start with nodesysctl's header).

Bounded: a node that cannot run a check now (not Ready, cordoned, a taint the policy's Job does
not tolerate, `nodesysctl.availability`) is skipped at once and reported; every other node gets
until CLEANUP_TIMEOUT_SECONDS after the deletion started. A check that fails (the node's Job
hit its deadline, the agent failed) is reported too; the deletion then goes on without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from nodesysctl.api import Mode, NodeSysctlPolicySpec
from nodesysctl.availability import agent_tolerations, judge
from nodesysctl.compose import NodeTarget, PolicyRanges, compose, precedence
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import (
    CheckOrder,
    CheckReason,
    HostDirs,
    JobFacts,
    NodeFacts,
    NodeState,
    host_dirs,
    job_name,
    short_hash,
)
from nodesysctl.results import judge_check, verify_job

# How long a deletion waits for the cleanup checks of the nodes that can run them. A check
# itself is bounded by the Job's activeDeadlineSeconds (120 s by default, 3600 s at most); a
# node busy with another policy's Job waits for it. After this, the nodes not cleaned yet are
# reported and the finalizer goes: a dead node never holds a deletion for long.
CLEANUP_TIMEOUT_SECONDS = 300.0
# How often the delete handler looks again while cleanup checks run (Kopf retries it).
CLEANUP_POLL_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class CleanupCheck:
    """One cleanup Job to create: apply `target` (the remaining policies' composition, maybe
    of none) on the order's node, with these directories."""

    order: CheckOrder
    target: NodeTarget
    dirs: HostDirs
    check_hash: str


@dataclasses.dataclass(frozen=True)
class CleanupPlan:
    checks: tuple[CleanupCheck, ...]
    stale_jobs: tuple[str, ...]  # the policy's other unfinished Jobs: delete (they would race)
    cleaned: tuple[str, ...]  # nodes whose cleanup check succeeded
    failed: tuple[tuple[str, str], ...]  # (node, why): the check failed or cannot run
    pending: tuple[str, ...]  # nodes still to clean (a check to start or running)
    timed_out: bool  # CLEANUP_TIMEOUT_SECONDS passed: `pending` nodes are given up

    @property
    def done(self) -> bool:
        return self.timed_out or not self.pending

    def unclean(self) -> list[tuple[str, str]]:
        """Every node left without its cleanup, with why: the failed ones, and the pending ones
        once timed out."""
        given_up = [(n, "the cleanup check did not finish in time") for n in self.pending]
        return [*self.failed, *(given_up if self.timed_out else [])]


def empty_target(sysctl_dir: str) -> NodeTarget:
    """The target where no Enforce policy remains: no value managed, nodesysctl's files gone."""
    return NodeTarget((), None, False, (), False, sysctl_dir)


def cleanup_target(
    node: NodeFacts, remaining: Sequence[PolicyRanges], sysctl_dir: str
) -> NodeTarget:
    """What the node's file must hold once the deleted policy is gone."""
    composition = compose(node.name, node.labels, remaining)
    return composition.target or empty_target(sysctl_dir)


def cleanup_dirs(node: NodeFacts, policy: str, target: NodeTarget, own_dir: str) -> HostDirs:
    """The directories the cleanup check opens: as any check of the target would, plus the
    deleted policy's own sysctlDir when its result predates the record of where it wrote."""
    dirs = host_dirs(node, target)
    result = node.results.get(policy)
    if result is not None and result.sysctl_dirs is None and own_dir != target.sysctl_dir:
        clean = tuple(sorted({*dirs.clean, own_dir}))
        return dataclasses.replace(dirs, clean=clean)
    return dirs


def needs_cleanup(node: NodeFacts, policy: str, spec: NodeSysctlPolicySpec) -> bool:
    """Whether the deleted policy may have left something in a file on the node: an Enforce
    policy's values are in the node's file; an Audit policy wrote nothing (unless its result
    records a directory, from when it enforced)."""
    result = node.results.get(policy)
    if result is None:
        return False
    return spec.remediation.mode == Mode.ENFORCE or result.sysctl_dirs != ()


def plan_cleanup(
    *,
    policy: str,
    uid: str,
    spec: NodeSysctlPolicySpec,
    nodes: Iterable[NodeFacts],
    remaining: Iterable[PolicyRanges],
    jobs: Iterable[JobFacts],
    outcomes: Mapping[str, Sequence[PodOutcome]],
    busy: Collection[str],
    elapsed: float,
    now: datetime,
) -> CleanupPlan:
    """The next step of deleting `policy`: which cleanup Jobs to create, which are done.

    `remaining`: the other valid policies not being deleted; `jobs`: the policy's Jobs (only
    those it owns count); `outcomes`: their pods' outcomes by Job name; `busy`: nodes where
    another policy's Job runs; `elapsed`: seconds since the deletion started.
    """
    others = precedence(remaining)
    own_dir = spec.remediation.sysctl_dir
    own = {job.name: job for job in jobs if verify_job(job, uid).believed}
    todo = sorted((n for n in nodes if needs_cleanup(n, policy, spec)), key=lambda n: n.name)
    wanted: dict[str, CleanupCheck] = {}
    for node in todo:
        target = cleanup_target(node, others, own_dir)
        dirs = cleanup_dirs(node, policy, target, own_dir)
        check_hash = short_hash("cleanup", target.digest(), own_dir, *dirs.clean)
        name = job_name(policy, node.name, f"cleanup|{check_hash}")
        order = CheckOrder(node.name, CheckReason.DELETED, name, node.boot_id)
        wanted[node.name] = CleanupCheck(order, target, dirs, check_hash)

    names = {check.order.job_name for check in wanted.values()}
    stale = sorted(j.name for j in own.values() if not j.finished and j.name not in names)
    occupied = {*busy, *(j.node for j in own.values() if not j.finished and j.name not in names)}
    running = sum(1 for j in own.values() if not j.finished and j.name in names)
    budget = spec.rollout.max_concurrent_for(len(todo)) - running

    checks: list[CleanupCheck] = []
    cleaned: list[str] = []
    failed: list[tuple[str, str]] = []
    pending: list[str] = []
    for node in todo:
        check = wanted[node.name]
        job = own.get(check.order.job_name)
        if job is not None and job.finished:
            judged = judge_check(
                job, outcomes.get(job.name, ()), uid, spec, check.check_hash, now
            ).result
            if judged.status in (NodeState.COMPLIANT, NodeState.REMEDIATED):
                cleaned.append(node.name)
            else:
                failed.append((node.name, judged.message))
            continue
        if job is not None:
            pending.append(node.name)
            continue
        blocked = judge(node.availability, agent_tolerations(spec, node.availability))
        if blocked is not None:
            failed.append((node.name, f"cannot run the cleanup check: {blocked.message()}"))
            continue
        pending.append(node.name)
        if node.name not in occupied and len(checks) < budget:
            checks.append(check)
    timed_out = elapsed >= CLEANUP_TIMEOUT_SECONDS
    return CleanupPlan(
        checks=() if timed_out else tuple(checks),
        stale_jobs=tuple(stale),
        cleaned=tuple(cleaned),
        failed=tuple(failed),
        pending=tuple(pending),
        timed_out=timed_out and bool(pending),
    )
