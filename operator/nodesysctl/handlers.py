"""Kopf wiring: watches, indices and one reconcile daemon per policy.

Foreign kinds are only *observed* — Nodes through a list+watch that keeps each Node's few facts
(`nodesysctl.nodewatch`), our Jobs and their Pods through `@kopf.index` — which never writes
annotations or finalizers onto them. All work is driven from the policy's own daemon; the
observers merely wake it up. Kopf blocks the daemons until every index is fully listed, so a
restarted operator sees the Jobs it created before it plans new ones; the daemons also wait for
the first complete list of Nodes.

Only the wiring is here: the daemon's loop is `nodesysctl.daemon`, the state the handlers share
is `nodesysctl.state`; both are Kopf-free and unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from typing import Any

import kopf

from nodesysctl import GROUP, PLURAL, VERSION, metrics
from nodesysctl.compose import PolicyRanges
from nodesysctl.config import OperatorConfig
from nodesysctl.daemon import PolicyDaemon
from nodesysctl.deletion import PolicyCleanup
from nodesysctl.kube import Kube, new_api_client
from nodesysctl.labels import (
    AGENT_APP,
    ANNOTATION_NODE,
    ANNOTATION_RESULT_PREFIX,
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_POLICY,
    MANAGED_BY,
)
from nodesysctl.nodewatch import NodeUpdate, NodeWatch, NodeWatchStaleError
from nodesysctl.observed import PodOutcome, job_facts_from_body
from nodesysctl.pacing import RestartLimiter
from nodesysctl.reconcile import PolicyReconciler
from nodesysctl.state import OperatorState

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Operator:
    """What the handlers share through Kopf's memo (one per operator process): the settings,
    the API, the reconciler, the in-memory state (`nodesysctl.state`) and the node watch."""

    config: OperatorConfig
    kube: Kube
    reconciler: PolicyReconciler
    state: OperatorState = dataclasses.field(default_factory=OperatorState)
    node_watch: NodeWatch | None = None
    cleanup: PolicyCleanup | None = None


def _operator(memo: Any) -> Operator:
    operator: Operator = memo.nodesysctl
    return operator


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    config = getattr(memo, "config", None) or OperatorConfig.from_env()
    api = await asyncio.to_thread(new_api_client)
    kube = Kube(api)
    state = OperatorState()
    reconciler = PolicyReconciler(
        kube,
        config.job_settings(),
        RestartLimiter(config.restarts_per_minute, config.restart_burst),
        protected_namespaces=(config.operator_namespace,),
        claims=state.claims,  # one agent Job per node, across all policies' passes
    )
    cleanup = PolicyCleanup(kube, config.job_settings(), state.claims)
    memo.nodesysctl = Operator(config, kube, reconciler, state, cleanup=cleanup)
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


def _start_node_watch(operator: Operator, loop: asyncio.AbstractEventLoop) -> None:
    """Nodes are watched by `NodeWatch` in its own thread, not by Kopf (see its docstring for
    the memory this saves); each update is handed to the event loop, which owns the cache."""
    state = operator.state

    def on_update(update: NodeUpdate) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the operator is exiting
            loop.call_soon_threadsafe(state.apply_node_update, update)

    # The watch holds a connection for minutes at a time: not one of the passes' pool.
    operator.node_watch = NodeWatch(operator.kube.with_own_pool(), on_update)
    operator.node_watch.start()


@kopf.on.probe(id="nodeWatch")
async def node_watch_health(memo: Any, **_: Any) -> dict[str, Any]:
    """Part of `--liveness`: the node watch runs outside Kopf, so Kopf's own health says
    nothing about it. A stuck watch fails the probe and the kubelet restarts the operator."""
    operator = _operator(memo)
    if operator.node_watch is None:
        return {"listed": False}
    try:
        return {**operator.node_watch.health(), "nodes": len(operator.state.nodes)}
    except NodeWatchStaleError as exc:
        # Permanent: Kopf retries a plain error inside the probe request instead of failing it.
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.cleanup()
async def stop_outside_kopf(memo: Any, **_: Any) -> None:
    operator: Operator | None = getattr(memo, "nodesysctl", None)
    if operator is not None and operator.node_watch is not None:
        operator.node_watch.stop()
    # With --leader-elect, Kopf waits for its threading.Event stop flag in an executor thread.
    # A stop by signal (Kopf's own handler) leaves that thread waiting, and the loop's final
    # executor shutdown waits for it: the process never ended, and never released the Lease.
    stop_flag = getattr(memo, "stop_flag", None)
    if stop_flag is not None:
        stop_flag.set()


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


@kopf.index(GROUP, VERSION, PLURAL)
async def policy_index(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    """Every valid policy not being deleted, for composing the policies on each node: Kopf
    starts the daemons only once this is fully listed, so no pass composes from a partial set."""
    ranges = PolicyRanges.from_body(body)
    return None if ranges is None else {ranges.name: ranges}


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def job_event(body: kopf.Body, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """Wake the Job's policy, and the policies whose checks wait for the Job's node."""
    policy = labels.get(LABEL_POLICY)
    node = (body.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_NODE, "")
    if policy:
        _operator(memo).state.job_changed(policy, node)


@kopf.on.event("v1", "pods", labels={LABEL_APP: AGENT_APP})
async def agent_event(labels: kopf.Labels, memo: Any, **_: Any) -> None:
    policy = labels.get(LABEL_POLICY)
    if policy:
        _operator(memo).state.wake([policy])


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_event(name: str, memo: Any, **_: Any) -> None:
    """Any policy change wakes every policy daemon: its own body is live but it sleeps, and
    the others may now conflict with it (or no longer). Passes that change nothing write
    nothing, so this settles after one round."""
    state = _operator(memo).state
    state.wakeup(name)
    state.wake()


# --- The policy's own work ---------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def reconcile_policy(name: str, uid: str, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    operator = _operator(memo)
    # Kopf passes each index as a keyword named after its handler function.
    job_index: kopf.Index[str, Any] = kwargs["job_index"]
    agent_pod_index: kopf.Index[str, Any] = kwargs["agent_pod_index"]
    policy_index: kopf.Index[str, Any] = kwargs["policy_index"]
    daemon = PolicyDaemon(
        operator.state,
        operator.reconciler,
        name,
        uid,
        body,
        job_index,
        agent_pod_index,
        policies=policy_index,
    )
    await daemon.run()


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def policy_deleted(
    name: str,
    uid: str,
    body: kopf.Body,
    memo: Any,
    runtime: datetime.timedelta,
    **kwargs: Any,
) -> None:
    """Leave nothing behind (`nodesysctl.deletion`): first a cleanup check on every node the
    policy checked, which rewrites the node's file for the policies that remain or removes it
    (retried every few seconds while they run, bounded by `cleanup.CLEANUP_TIMEOUT_SECONDS`
    since the deletion started); then the policy's Jobs and its result annotations on Nodes."""
    operator = _operator(memo)
    await operator.state.nodes_listed.wait()
    if operator.cleanup is not None:
        snap = operator.state.snapshot(
            name, uid, body, kwargs["job_index"], kwargs["agent_pod_index"], kwargs["policy_index"]
        )
        step = await asyncio.to_thread(
            operator.cleanup.run_once,
            snap,
            runtime.total_seconds(),
            datetime.datetime.now(datetime.UTC),
        )
        if not step.done:
            raise kopf.TemporaryError(step.message, delay=step.retry_in)
    kube = operator.kube
    removed = await asyncio.to_thread(
        kube.delete_policy_jobs, operator.config.job_namespace, f"{LABEL_POLICY}={name}"
    )
    annotated = operator.state.nodes_with_results(name)
    await asyncio.to_thread(kube.clear_node_annotation, ANNOTATION_RESULT_PREFIX + name, annotated)
    operator.state.forget_policy(name)  # and wakes the others: they compose without it now
    metrics.OPERATOR_METRICS.forget_policy(name)  # its series go: its alerts resolve
    logger.info(
        "policy %s deleted: %d jobs removed, %d nodes' results removed",
        name, removed, len(annotated),
    )  # fmt: skip
