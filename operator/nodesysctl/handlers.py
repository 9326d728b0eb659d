"""Kopf wiring: watches, indices and one reconcile daemon per policy.

Foreign kinds are only *observed* — Nodes through a list+watch that keeps each Node's few facts
(`nodesysctl.nodewatch`), our Jobs and their Pods through `@kopf.index` — which never writes
annotations or finalizers onto them. All work is driven from the policy's own daemon; the
observers merely wake it up. Kopf blocks the daemons until every index is fully listed, so a
restarted operator sees the Jobs it created before it plans new ones; the daemons also wait for
the first complete list of Nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf

from nodesysctl import GROUP, PLURAL, VERSION
from nodesysctl.jobs import JobSettings
from nodesysctl.kube import Kube, new_api_client
from nodesysctl.labels import (
    AGENT_APP,
    ANNOTATION_RESULT_PREFIX,
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_POLICY,
    MANAGED_BY,
)
from nodesysctl.nodewatch import NodeCache, NodeUpdate, NodeWatch, NodeWatchStaleError
from nodesysctl.observed import PodOutcome, job_facts_from_body
from nodesysctl.pacing import RestartLimiter
from nodesysctl.planning import NodeFacts, NodeResult, PolicyRanges
from nodesysctl.reconcile import PolicyReconciler, Snapshot

logger = logging.getLogger(__name__)

PASS_RETRY_SECONDS = 5.0
MAX_COALESCE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    job_namespace: str = "nodesysctl-jobs"
    agent_image: str = "ghcr.io/nodesysctl/nodesysctl:0.1.0"
    agent_python: str = "python"
    restarts_per_minute: float = 30.0
    restart_burst: int = 10

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """`kopf run -m nodesysctl.handlers` reads its settings from the environment."""
        defaults = cls()
        return cls(
            job_namespace=os.environ.get("NODESYSCTL_JOB_NAMESPACE", defaults.job_namespace),
            agent_image=os.environ.get("NODESYSCTL_AGENT_IMAGE", defaults.agent_image),
            agent_python=os.environ.get("NODESYSCTL_AGENT_PYTHON", defaults.agent_python),
            restarts_per_minute=float(
                os.environ.get("NODESYSCTL_RESTARTS_PER_MINUTE", defaults.restarts_per_minute)
            ),
            restart_burst=int(os.environ.get("NODESYSCTL_RESTART_BURST", defaults.restart_burst)),
        )


class OperatorState:
    """Shared by all handlers through Kopf's memo (one instance per operator process)."""

    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config = config
        self.reconciler = PolicyReconciler(
            kube,
            JobSettings(
                namespace=config.job_namespace,
                image=config.agent_image,
                python=config.agent_python,
            ),
            RestartLimiter(config.restarts_per_minute, config.restart_burst),
        )
        self.kube = kube
        self.wakeups: dict[str, asyncio.Event] = {}
        # The Nodes as the node watch last showed them; complete once `nodes_listed` is set.
        self.node_cache = NodeCache()
        self.nodes_listed = asyncio.Event()
        self.node_watch: NodeWatch | None = None
        self.policy_ranges: dict[str, PolicyRanges] = {}
        # Results this operator wrote and the node watch has not echoed back yet.
        self.written: dict[tuple[str, str], NodeResult] = {}

    def wakeup(self, policy: str) -> asyncio.Event:
        return self.wakeups.setdefault(policy, asyncio.Event())

    def wake(self, policies: Iterable[str] | None = None) -> None:
        for name in self.wakeups if policies is None else policies:
            self.wakeup(name).set()

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


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo.nodesysctl
    return state


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config = getattr(memo, "config", None) or OperatorConfig.from_env()
    api = await asyncio.to_thread(new_api_client)
    memo.nodesysctl = OperatorState(config, Kube(api))
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Filter our Jobs and Pods on the server: the operator never sees other workloads' pods.
    settings.watching.label_selectors["batch", "jobs"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    settings.watching.label_selectors["v1", "pods"] = f"{LABEL_APP}={AGENT_APP}"
    settings.posting.level = logging.WARNING
    # Discover the API once at start-up instead of watching CRDs and Namespaces: the operator
    # then needs no permission on either (the CRD is installed before the operator runs).
    settings.scanning.disabled = True
    # List in pages (our Jobs and Pods can be thousands in a big cluster): one unpaginated list
    # is a memory peak CPython keeps (freed arenas are not returned to the OS).
    settings.watching.chunk_size = 500
    # Kopf keeps an object's worker, and with it the object's last full body, alive this long
    # after its last event (default 5 s): a rollout's burst of Job and Pod events would keep all
    # those bodies at once. A later event simply starts a new worker.
    settings.queueing.idle_timeout = 0.1
    _start_node_watch(memo.nodesysctl, asyncio.get_running_loop())
    logger.info("nodesysctl operator configured: %s", config)


# --- Observers of foreign kinds: index + wake, never write -------------------------------


def _start_node_watch(state: OperatorState, loop: asyncio.AbstractEventLoop) -> None:
    """Nodes are watched by `NodeWatch` in its own thread, not by Kopf (see its docstring for
    the memory this saves); each update is handed to the event loop, which owns the cache."""

    def on_update(update: NodeUpdate) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the operator is exiting
            loop.call_soon_threadsafe(state.apply_node_update, update)

    # The watch holds a connection for minutes at a time: not one of the passes' pool.
    state.node_watch = NodeWatch(state.kube.with_own_pool(), on_update)
    state.node_watch.start()


@kopf.on.probe(id="nodeWatch")
async def node_watch_health(memo: Any, **_: Any) -> dict[str, Any]:
    """Part of `--liveness`: the node watch runs outside Kopf, so Kopf's own health says
    nothing about it. A stuck watch fails the probe and the kubelet restarts the operator."""
    state = _state(memo)
    if state.node_watch is None:
        return {"listed": False}
    try:
        return {**state.node_watch.health(), "nodes": len(state.nodes)}
    except NodeWatchStaleError as exc:
        # Permanent: Kopf retries a plain error inside the probe request instead of failing it.
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.cleanup()
async def stop_node_watch(memo: Any, **_: Any) -> None:
    state = getattr(memo, "nodesysctl", None)
    if state is not None and state.node_watch is not None:
        state.node_watch.stop()


# The handlers that wake a daemon are coroutines on purpose: Kopf runs a plain `def` handler in
# a worker thread, and asyncio.Event is not thread-safe — set() from another thread does not
# wake the event loop, so a daemon slept on until its poll timeout (BUSY_POLL_SECONDS) instead
# of reacting to the event (measured: 1.4x the floor's convergence time, see docs/performance.md).
# Jobs and Pods of our own are few, so they are Kopf indices: Kopf then starts the daemons only
# once they are fully listed, and a restarted operator sees its earlier Jobs before planning.
# Index handlers are pure and cheap: coroutines spare them a worker-thread hop per event.
@kopf.index("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def job_index(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    facts = job_facts_from_body(body)
    return None if facts is None else {facts.policy: facts}


@kopf.index("v1", "pods", labels={LABEL_APP: AGENT_APP})
async def agent_pod_index(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    outcome = PodOutcome.from_body(body)
    return None if outcome is None else {outcome.job: outcome}


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
@kopf.on.event("v1", "pods", labels={LABEL_APP: AGENT_APP})
async def agent_event(labels: kopf.Labels, memo: Any, **_: Any) -> None:
    policy = labels.get(LABEL_POLICY)
    if policy:
        _state(memo).wake([policy])


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_event(name: str, memo: Any, **_: Any) -> None:
    """Any policy change wakes every policy daemon: its own body is live but it sleeps, and
    the others may now conflict with it (or no longer). Passes that change nothing write
    nothing, so this settles after one round."""
    state = _state(memo)
    state.wakeup(name)
    state.wake()


# --- The policy's own work ---------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def reconcile_policy(name: str, uid: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    # Kopf passes each index as a keyword named after its handler function.
    job_index: kopf.Index[str, Any] = kwargs["job_index"]
    agent_pod_index: kopf.Index[str, Any] = kwargs["agent_pod_index"]
    state = _state(memo)
    wakeup = state.wakeup(name)
    # A pass on a partly listed Node set would take a running check of a not-yet-seen Node
    # for one of a deleted Node: plan only from the complete list.
    await state.nodes_listed.wait()
    try:
        while True:
            wakeup.clear()
            started = time.monotonic()
            snap = _snapshot(state, name, uid, body, job_index, agent_pod_index)
            try:
                result = await asyncio.to_thread(state.reconciler.run_once, snap, datetime.now(UTC))
            except Exception:
                # An API error mid-pass (apiserver restarting, a conflict): every step of a
                # pass is idempotent, so the next pass simply starts over. Kopf's own daemon
                # restart would wait a minute; a short retry keeps the rollout moving.
                logger.exception("policy %s: reconcile pass failed; retrying", name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=PASS_RETRY_SECONDS)
                continue
            for node, written in result.recorded.items():
                state.written[(name, node)] = written
            if state.policy_ranges.get(name) != result.ranges:
                # Others decide conflicts from these ranges: let them see the new ones.
                if result.ranges is None:
                    state.policy_ranges.pop(name, None)
                else:
                    state.policy_ranges[name] = result.ranges
                state.wake(p for p in state.wakeups if p != name)
            took = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=result.delay)
            # Coalesce bursts (a restarted operator sees every Node once, each a wake-up): wait
            # as long as the last pass took, so passes never use more than half of the time.
            await asyncio.sleep(min(took, MAX_COALESCE_SECONDS))
    finally:
        state.policy_ranges.pop(name, None)


def _snapshot(
    state: OperatorState,
    name: str,
    uid: str,
    body: kopf.Body,
    job_index: kopf.Index[str, Any],
    agent_pod_index: kopf.Index[str, Any],
) -> Snapshot:
    nodes = [_overlay(state, name, facts) for facts in state.nodes.values()]
    jobs = list(job_index.get(name, ()))
    # Every outcome under a Job's name, not one of them: any pod can carry the job-name label,
    # and a forged one must not shadow the Job's own. The pass judges them (results.judge_check).
    outcomes = {job.name: tuple(agent_pod_index.get(job.name, ())) for job in jobs}
    meta = body.get("metadata") or {}
    return Snapshot(
        name=name,
        uid=uid,
        generation=int(meta.get("generation") or 0),
        created=str(meta.get("creationTimestamp") or ""),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        nodes=nodes,
        jobs=jobs,
        pod_outcomes=outcomes,
        other_policies=[r for p, r in state.policy_ranges.items() if p != name],
    )


def _overlay(state: OperatorState, policy: str, facts: NodeFacts) -> NodeFacts:
    """Use a result we wrote until the node watch echoes it back (no double checks)."""
    written = state.written.get((policy, facts.name))
    if written is None:
        return facts
    seen = facts.results.get(policy)
    if seen == written:
        del state.written[(policy, facts.name)]
        return facts
    return dataclasses.replace(facts, results={**facts.results, policy: written})


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def policy_deleted(name: str, memo: Any, **_: Any) -> None:
    """Leave nothing behind: the policy's Jobs and its result annotations on Nodes."""
    state = _state(memo)
    removed = await asyncio.to_thread(
        state.kube.delete_policy_jobs, state.config.job_namespace, f"{LABEL_POLICY}={name}"
    )
    annotated = [facts.name for facts in state.nodes.values() if name in facts.results]
    await asyncio.to_thread(
        state.kube.clear_node_annotation, ANNOTATION_RESULT_PREFIX + name, annotated
    )
    state.policy_ranges.pop(name, None)
    state.wakeups.pop(name, None)
    state.written = {key: value for key, value in state.written.items() if key[0] != name}
    state.wake()  # nodes this policy contested may now belong to another policy
    logger.info(
        "policy %s deleted: %d jobs removed, %d nodes cleaned", name, removed, len(annotated)
    )
