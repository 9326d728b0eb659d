"""The operator's in-memory state: what the watches told us, what the passes wrote.

One instance per operator process, shared by the Kopf handlers and used on the event loop
(the node watch's thread hands its updates over with `call_soon_threadsafe`), except
`NodeClaims`, which the passes' worker threads call. Kopf-free: the handlers pass in plain
index contents, so all of it is unit-tested without Kopf.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from nodesysctl.nodewatch import NodeCache, NodeUpdate
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, PolicyRanges
from nodesysctl.reconcile import PassResult, Snapshot

# A claimed node whose Job the Jobs index has not shown within this long is free again: the
# create failed without a release (an exception between the claim and the create), or the
# Job was removed before the watch delivered it.
CLAIM_GRACE_SECONDS = 60.0


@dataclasses.dataclass
class _Claim:
    policy: str
    job: str
    since: float
    seen: bool = False  # the Jobs index has shown the Job


class NodeClaims:
    """At most one agent Job per node, across all policies.

    The Jobs index alone cannot serialize: the passes of two policies run at the same time (in
    worker threads), and a Job is in the index only once the watch delivers it. So a pass
    claims a node right before it creates a Job there (`claim`, refused while another policy
    holds it); the claim lasts until the index shows that Job finished, or gone after it was
    seen (`refresh`, at each snapshot). Nodes where the index shows another policy's unfinished
    Job are busy anyway (a Job left by an earlier operator process included).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}  # by node
        self.clock = clock

    def claim(self, node: str, policy: str, job: str) -> bool:
        with self._lock:
            held = self._claims.get(node)
            if held is not None and held.policy != policy:
                return False
            if held is None or held.job != job:
                self._claims[node] = _Claim(policy, job, self.clock())
            return True

    def release(self, node: str, job: str) -> None:
        with self._lock:
            held = self._claims.get(node)
            if held is not None and held.job == job:
                del self._claims[node]

    def release_policy(self, policy: str) -> None:
        with self._lock:
            self._claims = {n: c for n, c in self._claims.items() if c.policy != policy}

    def refresh(self, jobs: Mapping[str, Iterable[JobFacts]]) -> None:
        """Drop the claims whose Job the index shows finished, or no longer shows after it
        did, or has not shown within CLAIM_GRACE_SECONDS."""
        by_name = {job.name: job for listed in jobs.values() for job in listed}
        now = self.clock()
        with self._lock:
            for node, held in list(self._claims.items()):
                job = by_name.get(held.job)
                if job is not None and not job.finished:
                    held.seen = True
                elif job is not None or held.seen or now - held.since > CLAIM_GRACE_SECONDS:
                    del self._claims[node]

    def held_by_others(self, policy: str) -> set[str]:
        with self._lock:
            return {node for node, held in self._claims.items() if held.policy != policy}


def busy_nodes(
    policy: str, jobs: Mapping[str, Iterable[JobFacts]], claims: NodeClaims
) -> frozenset[str]:
    """Where an agent Job of another policy runs (the index) or is about to (a claim)."""
    running = {
        job.node
        for owner, listed in jobs.items()
        if owner != policy
        for job in listed
        if not job.finished
    }
    return frozenset(running | claims.held_by_others(policy))


class OperatorState:
    def __init__(self) -> None:
        # The Nodes as the node watch last showed them; complete once `nodes_listed` is set.
        self.node_cache = NodeCache()
        self.nodes_listed = asyncio.Event()
        self.wakeups: dict[str, asyncio.Event] = {}  # per policy daemon
        # Results this operator wrote and the node watch has not echoed back yet.
        self.written: dict[tuple[str, str], NodeResult] = {}  # (policy, node) -> result
        self.claims = NodeClaims()
        # Nodes each policy's last pass could not check because another Job occupied them.
        self.queued: dict[str, frozenset[str]] = {}

    # --- Wake-ups -----------------------------------------------------------------------------

    def wakeup(self, policy: str) -> asyncio.Event:
        return self.wakeups.setdefault(policy, asyncio.Event())

    def wake(self, policies: Iterable[str] | None = None) -> None:
        """Wake these policies' daemons (every known one if None)."""
        for name in self.wakeups if policies is None else policies:
            self.wakeup(name).set()

    # --- Nodes --------------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, NodeFacts]:
        return self.node_cache.nodes

    def apply_node_update(self, update: NodeUpdate) -> None:
        """On the event loop: take one update of the node watch; wake the policies if a Node's
        facts changed (heartbeats change nothing)."""
        changed = self.node_cache.apply(update)
        gone = {name for name in changed if name not in self.node_cache.nodes}
        if gone:
            self.written = {key: value for key, value in self.written.items() if key[1] not in gone}
        self.nodes_listed.set()  # every update comes after the first complete list
        if changed:
            self.wake()

    def nodes_with_results(self, policy: str) -> list[str]:
        """The Nodes carrying a result annotation of this policy."""
        return [facts.name for facts in self.nodes.values() if policy in facts.results]

    # --- Passes -------------------------------------------------------------------------------

    def snapshot(
        self,
        name: str,
        uid: str,
        body: Mapping[str, Any],
        jobs: Mapping[str, Iterable[JobFacts]],
        pod_outcomes: Mapping[str, Iterable[PodOutcome]],
        policies: Mapping[str, Iterable[PolicyRanges]] | None = None,
    ) -> Snapshot:
        """What a pass of policy `name` works from: its body, the Nodes (with our unechoed
        writes), its Jobs and their pods' outcomes (the Kopf indices' contents, by policy and by
        Job name), the other valid policies (the policy index: Kopf lists it fully before any
        daemon starts, so a restarted operator composes from all of them at once) and the
        nodes where another policy's agent Job runs."""
        nodes = [self._overlay(name, facts) for facts in self.nodes.values()]
        self.claims.refresh(jobs)
        policy_jobs = list(jobs.get(name, ()))
        # Every pod filed under a Job's name: a forged one must not shadow the Job's own pod
        # (the pass believes only the pod the Job owns).
        outcomes = {
            job.name: found
            for job in policy_jobs
            if (found := tuple(pod_outcomes.get(job.name, ())))
        }
        meta = body.get("metadata") or {}
        return Snapshot(
            name=name,
            uid=uid,
            generation=int(meta.get("generation") or 0),
            created=str(meta.get("creationTimestamp") or ""),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            nodes=nodes,
            jobs=policy_jobs,
            pod_outcomes=outcomes,
            other_policies=[
                ranges
                for listed in (policies or {}).values()
                for ranges in listed
                if ranges.name != name
            ],
            busy=busy_nodes(name, jobs, self.claims),
            # Still carrying a readiness taint: fixed and evicted from at once, whatever the
            # windows (the node serves no workload yet).
            unverified=frozenset(node.name for node in nodes if node.readiness_taints),
        )

    def _overlay(self, policy: str, facts: NodeFacts) -> NodeFacts:
        """Use a result we wrote until the node watch echoes it back (no double checks)."""
        written = self.written.get((policy, facts.name))
        if written is None:
            return facts
        seen = facts.results.get(policy)
        if seen == written:
            del self.written[(policy, facts.name)]
            return facts
        return dataclasses.replace(facts, results={**facts.results, policy: written})

    def record_pass(self, policy: str, result: PassResult) -> None:
        """Remember what a successful pass wrote and which nodes it waits for."""
        for node, written in result.recorded.items():
            self.written[(policy, node)] = written
        if result.queued:
            self.queued[policy] = frozenset(result.queued)
        else:
            self.queued.pop(policy, None)

    def job_changed(self, policy: str, node: str) -> None:
        """A Job event: wake its policy, and the policies queued for that node."""
        self.wake([policy, *(p for p, nodes in self.queued.items() if node in nodes)])

    def forget_policy(self, policy: str) -> None:
        """The policy is deleted (its Jobs and annotations are gone): drop all we kept for it
        and wake the others, since nodes it took part in compose anew without it."""
        self.wakeups.pop(policy, None)
        self.queued.pop(policy, None)
        self.claims.release_policy(policy)
        self.written = {key: value for key, value in self.written.items() if key[0] != policy}
        self.wake()
