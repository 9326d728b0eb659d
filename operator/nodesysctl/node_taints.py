"""Carrying out a readiness decision on a Node: a resourceVersion-guarded taint update.

`nodesysctl.readiness` decides; this writes. The write is a JSON patch whose first operation
tests `metadata.resourceVersion`, so it applies only to the Node it was computed from: the
kubelet, the node lifecycle controller and autoscalers write `spec.taints` too, and a merge
patch (which replaces the whole list) would drop a taint one of them added meanwhile. On a
conflict (the test failed, 422, or the version moved, 409) the Node is read again and the
decision made again from what it says now, with backoff; every other taint is copied as it is.

Blocking: runs in the pass's worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from nodesysctl.backoff import Backoff
from nodesysctl.compose import NodeComposition, PolicyRanges
from nodesysctl.kube import KubeError, node_ref, policy_ref
from nodesysctl.planning import NodeFacts
from nodesysctl.readiness import (
    ReadinessAction,
    ReadinessDecision,
    build_taints_patch,
    decide,
    edit_taints,
    release,
    unverified_because,
)

logger = logging.getLogger(__name__)

# A Node written by others between our read and our write is read again this many times in a
# row at most; then the pass fails and the daemon's backoff takes over.
TAINT_WRITE_ATTEMPTS = 5
FIRST_CONFLICT_DELAY_SECONDS = 0.1
MAX_CONFLICT_DELAY_SECONDS = 2.0


class TaintClient(Protocol):
    """The two Node calls a taint update makes (`nodesysctl.kube.Kube` implements them)."""

    def get_node(self, name: str) -> Mapping[str, Any] | None: ...

    def json_patch_node(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None: ...


class TaintConflictError(Exception):
    """The Node kept changing under every attempt to update its taints."""


# What kube-apiserver answers when a JSON patch does not apply (patch.go: a generic 422 with no
# causes); for our patch, whose paths always exist, that is the failed resourceVersion test.
# A validation error is a 422 too, but names the object and carries its field causes.
PATCH_NOT_APPLIED = "the server rejected our request due to an error in our request"


def is_conflict(exc: KubeError) -> bool:
    """The Node changed since it was read: a stale version (409), or the failed `test` of the
    resourceVersion (422 with the generic message and no causes; tests/integration/test_fence.py
    shows the real answer)."""
    if exc.status == 409:
        return True
    return (
        exc.status == 422
        and exc.message == PATCH_NOT_APPLIED
        and '"causes"' not in str(exc.body or "")
    )


def write_decision(
    client: TaintClient,
    decision: ReadinessDecision,
    redecide: Callable[[NodeFacts], ReadinessDecision | None],
    *,
    sleep: Callable[[float], Any] = time.sleep,
) -> ReadinessDecision | None:
    """Carry `decision` out on its Node; returns what was done (None: nothing, because the Node
    is gone, or already as wanted, or the fresh read decided otherwise).

    `redecide` makes the decision again from the Node as read (`readiness.decide` or
    `readiness.release` with the pass's policies)."""
    backoff = Backoff(FIRST_CONFLICT_DELAY_SECONDS, MAX_CONFLICT_DELAY_SECONDS)
    current: ReadinessDecision | None = decision
    for attempt in range(TAINT_WRITE_ATTEMPTS):
        body = client.get_node(decision.node)
        if body is None:
            return None
        if attempt:  # the Node changed: decide again from what it says now
            current = redecide(NodeFacts.from_body(body))
        if current is None:
            return None
        taints = edit_taints((body.get("spec") or {}).get("taints") or (), current)
        if taints is None:
            return None
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        try:
            client.json_patch_node(decision.node, build_taints_patch(version, taints))
            return current
        except KubeError as exc:
            if exc.status == 404:
                return None
            if not is_conflict(exc):
                raise
            delay = backoff.next_delay()
            logger.info(
                "node %s changed while updating its taints (%s); again in %.2f s",
                decision.node, exc, delay,
            )  # fmt: skip
            sleep(delay)
    raise TaintConflictError(
        f"node {decision.node}: the taints changed under {TAINT_WRITE_ATTEMPTS} updates in a row"
    )


class ReadinessClient(TaintClient, Protocol):
    """A taint update's calls and the Events that say what happened."""

    def post_event(
        self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str
    ) -> None: ...


def _one_decision(
    policy: PolicyRanges,
    node: NodeFacts,
    policies: Sequence[PolicyRanges],
    compositions: Mapping[str, NodeComposition],
) -> ReadinessDecision | None:
    if node.name in compositions:  # the policy selects the node
        return decide(policy, node, policies, compositions[node.name])
    if policy.name in node.results:  # it checked the node and no longer selects it
        return release(policy, node, policies, "no longer selects the node")
    return None


def carry_out_readiness(
    client: ReadinessClient,
    *,
    policy: PolicyRanges,
    uid: str,
    policies: Sequence[PolicyRanges],
    nodes: Sequence[NodeFacts],
    compositions: Mapping[str, NodeComposition],
    recorded: Collection[str],
    each: Callable[[Callable[[ReadinessDecision], Any], Iterable[ReadinessDecision]], Any],
) -> list[ReadinessDecision]:
    """One pass's readiness work for `policy` (`spec.readiness`): take its taint off the nodes
    every policy naming it verified, put it back on rebooted ones (`retaintOnReboot`), release
    it on nodes the policy no longer selects; each write with an Event on the Node. A node
    whose result `recorded` this pass leaves the taint on gets a Warning Event saying why.

    `nodes`: every Node's facts, with this pass's results; `compositions`: by the names of the
    nodes the policy selects; `each`: how the writes run (the pass's I/O pool). Returns what
    was carried out."""
    if policy.spec.readiness is None:
        return []
    decisions = [d for n in nodes if (d := _one_decision(policy, n, policies, compositions))]
    by_name = {n.name: n for n in nodes}
    for kept in (d for d in decisions if d.action is ReadinessAction.KEEP):
        if kept.node not in recorded:
            continue  # said when the result was recorded; not again every pass
        node, composition = by_name[kept.node], compositions.get(kept.node)
        own = unverified_because(policy.name, policy.spec, node, composition)
        if own is not None:  # this policy's new result is what keeps the taint
            message = f"{kept.taint.key}:{kept.taint.effect} stays: {own}"
            for involved in (node_ref(kept.node), policy_ref(policy.name, uid)):
                client.post_event(involved, warning=True, reason="ReadinessTaintKept",
                                  message=message)  # fmt: skip

    def carry_out(decision: ReadinessDecision) -> ReadinessDecision | None:
        return _write_and_announce(
            client,
            policy.name,
            decision,
            lambda fresh: _one_decision(policy, fresh, policies, compositions),
        )

    writes = [d for d in decisions if d.action is not ReadinessAction.KEEP]
    return [done for done in each(carry_out, writes) if done is not None]


def release_deleted(
    client: ReadinessClient,
    *,
    former: PolicyRanges,
    remaining: Sequence[PolicyRanges],
    nodes: Sequence[NodeFacts],
    each: Callable[[Callable[[ReadinessDecision], Any], Iterable[ReadinessDecision]], Any],
) -> list[ReadinessDecision]:
    """A deleted policy's taint comes off the nodes it selected or checked, unless a remaining
    policy that selects the node names it too (`readiness.release`)."""
    why = "was deleted"
    covered = [
        n for n in nodes if former.name in n.results or former.spec.node_selector.matches(n.labels)
    ]
    decisions = [d for n in covered if (d := release(former, n, remaining, why))]

    def carry_out(decision: ReadinessDecision) -> ReadinessDecision | None:
        return _write_and_announce(
            client, former.name, decision, lambda fresh: release(former, fresh, remaining, why)
        )

    return [done for done in each(carry_out, decisions) if done is not None]


def _write_and_announce(
    client: ReadinessClient,
    policy: str,
    decision: ReadinessDecision,
    redecide: Callable[[NodeFacts], ReadinessDecision | None],
) -> ReadinessDecision | None:
    """`write_decision`, then an Event on the Node saying what was done and why."""
    done = write_decision(client, decision, redecide)
    if done is None:
        return None
    removed = done.action is ReadinessAction.REMOVE
    verb = "removed" if removed else "put back"
    client.post_event(
        node_ref(done.node),
        warning=False,
        reason="ReadinessTaintRemoved" if removed else "ReadinessTaintRestored",
        message=f"{verb} {done.taint.key}:{done.taint.effect}: {done.reason}",
    )
    logger.info("policy %s: node %s: %s %s (%s)", policy, done.node, verb, done.taint, done.reason)
    return done
