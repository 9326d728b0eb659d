"""The operator's in-memory state: what the watches told us, what the passes wrote.

One instance per operator process, shared by the Kopf handlers and used only on the event loop
(the node watch's thread hands its updates over with `call_soon_threadsafe`). Kopf-free: the
handlers pass in plain index contents, so all of it is unit-tested without Kopf.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from nodesysctl.nodewatch import NodeCache, NodeUpdate
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, PolicyRanges
from nodesysctl.reconcile import PassResult, Snapshot


class OperatorState:
    def __init__(self) -> None:
        # The Nodes as the node watch last showed them; complete once `nodes_listed` is set.
        self.node_cache = NodeCache()
        self.nodes_listed = asyncio.Event()
        self.wakeups: dict[str, asyncio.Event] = {}  # per policy daemon
        # Each running policy's ranges, from its last pass: the others detect conflicts by them.
        self.policy_ranges: dict[str, PolicyRanges] = {}
        # Results this operator wrote and the node watch has not echoed back yet.
        self.written: dict[tuple[str, str], NodeResult] = {}  # (policy, node) -> result

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
    ) -> Snapshot:
        """What a pass of policy `name` works from: its body, the Nodes (with our unechoed
        writes), its Jobs and their pods' outcomes (the Kopf indices' contents, by policy and by
        Job name), and the other policies' ranges."""
        nodes = [self._overlay(name, facts) for facts in self.nodes.values()]
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
            other_policies=[r for p, r in self.policy_ranges.items() if p != name],
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
        """Remember what a successful pass wrote; if its ranges changed, wake the others."""
        for node, written in result.recorded.items():
            self.written[(policy, node)] = written
        if self.policy_ranges.get(policy) != result.ranges:
            # Others decide conflicts from these ranges: let them see the new ones.
            if result.ranges is None:
                self.policy_ranges.pop(policy, None)
            else:
                self.policy_ranges[policy] = result.ranges
            self.wake(p for p in self.wakeups if p != policy)

    def drop_ranges(self, policy: str) -> None:
        """The policy's daemon stopped: its ranges no longer contest any node."""
        self.policy_ranges.pop(policy, None)

    def forget_policy(self, policy: str) -> None:
        """The policy is deleted (its Jobs and annotations are gone): drop all we kept for it
        and wake the others, since nodes it contested may now belong to one of them."""
        self.policy_ranges.pop(policy, None)
        self.wakeups.pop(policy, None)
        self.written = {key: value for key, value in self.written.items() if key[0] != policy}
        self.wake()
