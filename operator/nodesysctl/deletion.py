"""Deleting a policy: the blocking I/O half of its cleanup, and only that.

The Kopf delete handler (`nodesysctl.handlers.policy_deleted`, behind the policy's finalizer)
snapshots what the watches know and runs `PolicyCleanup.run_once` in a worker thread; until the
plan (`nodesysctl.cleanup.plan_cleanup`) is done it raises `kopf.TemporaryError` to be called
again. A step deletes the policy's other unfinished Jobs, creates the cleanup Jobs (claiming
each node, as a pass does: at most one agent Job per node), and once done reports the nodes
left unclean. Nothing here imports Kopf.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from nodesysctl.api import InvalidPolicy, NodeSysctlPolicySpec, parse_spec
from nodesysctl.availability import AVAILABLE
from nodesysctl.cleanup import CLEANUP_POLL_SECONDS, CleanupCheck, CleanupPlan, plan_cleanup
from nodesysctl.compose import PolicyRanges
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.kube import node_ref, policy_ref
from nodesysctl.node_taints import release_deleted
from nodesysctl.observed import PodOutcome
from nodesysctl.reconcile import IO_PARALLELISM, Claims, PassClient, Snapshot, admitted
from nodesysctl.results import verify_job, verify_outcome

logger = logging.getLogger(__name__)

# At most this many unclean nodes are named in the policy's Event (each gets its own Event).
MAX_NAMED_NODES = 10


@dataclasses.dataclass(frozen=True)
class CleanupStep:
    """What one step found: `done` (the finalizer may go), else when to look again."""

    done: bool
    retry_in: float
    message: str


class PolicyCleanup:
    def __init__(self, kube: PassClient, settings: JobSettings, claims: Claims) -> None:
        self.kube = kube
        self.settings = settings
        self.claims = claims
        self.io = ThreadPoolExecutor(IO_PARALLELISM, thread_name_prefix="nodesysctl-cleanup")

    def run_once(self, snap: Snapshot, elapsed: float, now: datetime) -> CleanupStep:
        spec = _spec_or_default(snap.spec)
        plan = plan_cleanup(
            policy=snap.name,
            uid=snap.uid,
            spec=spec,
            nodes=snap.nodes,
            remaining=admitted(snap.other_policies, self.settings),
            jobs=snap.jobs,
            outcomes=self._outcomes(snap),
            busy=snap.busy,
            elapsed=elapsed,
            now=now,
        )
        namespace = self.settings.namespace
        list(self.io.map(lambda name: self.kube.delete_job(namespace, name), plan.stale_jobs))
        granted = [
            c for c in plan.checks if self.claims.claim(c.order.node, snap.name, c.order.job_name)
        ]
        bodies = [self._job(snap, spec, check) for check in granted]
        try:
            created = list(self.io.map(self.kube.create_job, bodies))
        except Exception:
            for check in granted:
                self.claims.release(check.order.node, check.order.job_name)
            raise
        for check, made in zip(granted, created, strict=True):
            if made:  # else it exists: this deletion's own earlier step made it
                logger.info(
                    "policy %s (deleted): cleaning node %s with Job %s",
                    snap.name, check.order.node, check.order.job_name,
                )  # fmt: skip
        if not plan.done:
            return CleanupStep(
                False,
                CLEANUP_POLL_SECONDS,
                f"cleaning {len(plan.pending)} nodes before the policy goes",
            )
        self._report(snap, plan)
        # A node never stays blocked by a policy that no longer exists (`readiness.release`).
        release_deleted(
            self.kube,
            former=PolicyRanges(snap.name, snap.created, spec),
            remaining=admitted(snap.other_policies, self.settings),
            nodes=snap.nodes,
            each=lambda call, items: list(self.io.map(call, items)),
        )
        return CleanupStep(True, 0.0, f"{len(plan.cleaned)} nodes cleaned")

    def _job(
        self, snap: Snapshot, spec: NodeSysctlPolicySpec, check: CleanupCheck
    ) -> dict[str, Any]:
        return build_agent_job(
            policy=snap.name,
            policy_uid=snap.uid,
            spec=spec,
            order=check.order,
            settings=self.settings,
            target=check.target,
            dirs=check.dirs,
            check_hash=check.check_hash,
            node=next(
                (n.availability for n in snap.nodes if n.name == check.order.node), AVAILABLE
            ),
        )

    def _outcomes(self, snap: Snapshot) -> Mapping[str, Sequence[PodOutcome]]:
        """The pod outcomes of the policy's finished Jobs; when the watch has none the pass
        would believe, the API server's too (as a pass does)."""
        found: dict[str, Sequence[PodOutcome]] = dict(snap.pod_outcomes)
        for job in snap.jobs:
            seen = list(found.get(job.name, ()))
            if not job.finished or not verify_job(job, snap.uid).believed:
                continue
            if any(verify_outcome(job, o, snap.uid).believed for o in seen):
                continue
            pods = self.kube.job_pods(self.settings.namespace, job.name)
            fetched = [o for o in (PodOutcome.from_body(p) for p in pods) if o is not None]
            found[job.name] = seen + fetched
        return found

    def _report(self, snap: Snapshot, plan: CleanupPlan) -> None:
        """The nodes left unclean: one Event on each Node, one on the policy naming them."""
        unclean = plan.unclean()
        for node, why in unclean:
            self.kube.post_event(
                node_ref(node),
                warning=True,
                reason="CleanupFailed",
                message=f"{snap.name} (deleted): its file may be left here: {why}",
            )
        if unclean:
            named = ", ".join(f"{node} ({why})" for node, why in unclean[:MAX_NAMED_NODES])
            more = len(unclean) - MAX_NAMED_NODES
            self.kube.post_event(
                policy_ref(snap.name, snap.uid),
                warning=True,
                reason="CleanupIncomplete",
                message=f"{len(unclean)} nodes not cleaned: {named}"
                + (f" and {more} more" if more > 0 else ""),
            )
        logger.info(
            "policy %s deleted: %d nodes cleaned, %d not",
            snap.name, len(plan.cleaned), len(unclean),
        )  # fmt: skip


def _spec_or_default(raw: Mapping[str, Any]) -> NodeSysctlPolicySpec:
    """The deleted policy's spec; the defaults when it is invalid (its nodes still get cleaned,
    in the default directory, by a default Job)."""
    try:
        return parse_spec(raw)
    except InvalidPolicy:
        return parse_spec({})
