"""The operator's Prometheus metrics: one registry of its own, every metric, and `/metrics`.

Free of Kopf and of the Kubernetes client: the I/O and wiring layers that carry out a pass
(`nodesysctl.reconcile`, `daemon`, `nodewatch`, `handlers`) record what the pure results
already say (the policy summary, each recorded node result, each restart step), through the
`record_*` functions here. The server is started from plain code (`nodesysctl.cli`) before
Kopf, so a process that is not (yet) the leader still answers with `nodesysctl_build_info` and
`nodesysctl_leader{identity} 0`.

Naming follows the ecosystem (kured, Reloader, node-readiness-controller):
`nodesysctl_<thing>_<unit>`, counters end in `_total`, durations are `_seconds` histograms.
Labels are bounded: a policy name and a few fixed values, never a node (5000 nodes would be
5000 series per metric). Every counter of a policy is pre-seeded at zero with each of its
label values (`seed_policy`), so `increase()` and `rate()` see the first event, and a deleted
policy's series are removed (`forget_policy`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import socket
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from nodesysctl.planning import NodeState, PolicySummary
from nodesysctl.restarts import EvictionResult, RestartAction, RestartPlan

# A `_created` series beside each counter doubles the series for a timestamp no alert uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # (untyped in 0.26)

DEFAULT_METRICS_PORT = 8081
# The label values of `nodesysctl_nodes{state}`: every state a node of a policy can be in.
NODE_STATE_LABELS = {state: state.value.lower() for state in NodeState}
# What a finished check can say (never Pending or Waiting: those have no result).
CHECK_RESULT_LABELS = {
    state: NODE_STATE_LABELS[state]
    for state in (NodeState.COMPLIANT, NodeState.REMEDIATED, NodeState.DRIFTED, NodeState.FAILED)
}
# (kind, result) of `nodesysctl_restarts_total`: a Deployment or StatefulSet gets a rollout
# restart, a DaemonSet an eviction of its pod on the node, which is refused (a PDB) or finds
# the pod gone.
RESTART_RESULT_LABELS = {
    EvictionResult.EVICTED: "evicted",
    EvictionResult.BLOCKED: "blocked",
    EvictionResult.GONE: "gone",
}
ROLLOUT_RESTARTED = "restarted"
RESTART_SERIES = (
    ("Deployment", ROLLOUT_RESTARTED),
    ("StatefulSet", ROLLOUT_RESTARTED),
    *(("DaemonSet", result) for result in RESTART_RESULT_LABELS.values()),
)
# `nodesysctl_restarts_skipped_total{reason}`: what a wave leaves out, and why.
SKIP_REASON_LABELS = {
    RestartAction.SKIP_PAUSED: "paused",
    RestartAction.EVICTION_BLOCKED: "eviction_blocked",
    RestartAction.NOT_RESTARTABLE: "not_restartable",
    RestartAction.NOT_SELECTED: "not_selected",
    RestartAction.ALREADY_DONE: "already_done",
}
# A check runs seconds (the pod's start dominates) to its deadline (activeDeadlineSeconds,
# at most an hour).
CHECK_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# A pass takes milliseconds when nothing is due, seconds when it writes hundreds of results.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WhileLeading(Collector):
    """The operator's own metrics, exported while this process leads (or runs alone). A
    standby exports only `nodesysctl_build_info`, `nodesysctl_leader` (0) and the process
    metrics: its zeros and its never-heard node watch would read as a second operator."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self.inner = inner
        self.leading = True  # until an election says otherwise (a lone process leads)

    def collect(self) -> Iterable[Metric]:
        return self.inner.collect() if self.leading else ()


@dataclasses.dataclass(frozen=True)
class OperatorMetrics:
    """Every metric of the operator, in `registry` (not the client's global one: nothing a
    library registers there is exported by accident, and tests make their own)."""

    registry: CollectorRegistry
    operating: WhileLeading
    nodes: Gauge
    checks: Counter
    check_duration: Histogram
    remediations: Counter
    restarts: Counter
    restarts_skipped: Counter
    rollout_halted: Gauge
    reconcile_errors: Counter
    reconcile_duration: Histogram
    node_watch_last_event: Gauge
    leader: Gauge
    build_info: Gauge

    @classmethod
    def create(cls, *, process: bool = True) -> OperatorMetrics:
        exported = CollectorRegistry()
        if process:  # process_resident_memory_bytes, CPU, open fds: read from /proc per scrape
            ProcessCollector(registry=exported)
        # Everything but the process, leader and build metrics: exported only while leading.
        registry = CollectorRegistry()
        operating = WhileLeading(registry)
        exported.register(operating)

        def gauge(name: str, text: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, text, list(labels), registry=registry)

        def counter(name: str, text: str, labels: Iterable[str]) -> Counter:
            return Counter(name, text, list(labels), registry=registry)

        metrics = cls(
            registry=exported,
            operating=operating,
            nodes=gauge(
                "nodesysctl_nodes",
                "Nodes a policy selects, by the state of their last check (compliant + "
                "remediated = the status' compliant; waiting: cannot run a check now).",
                ["policy", "state"],
            ),
            checks=counter(
                "nodesysctl_checks",
                "Agent checks whose result was recorded on the Node, by result.",
                ["policy", "result"],
            ),
            check_duration=Histogram(
                "nodesysctl_check_duration_seconds",
                "From the agent Job's creation to its result recorded on the Node.",
                ["policy"],
                buckets=CHECK_BUCKETS,
                registry=registry,
            ),
            remediations=counter(
                "nodesysctl_remediations",
                "Checks that fixed a node (narrowed its range or reserved its ports).",
                ["policy"],
            ),
            restarts=counter(
                "nodesysctl_restarts",
                "Restart steps carried out: a rollout restart (restarted), or an eviction of "
                "a DaemonSet's pod on a remediated node (evicted, blocked by a PDB, gone).",
                ["policy", "kind", "result"],
            ),
            restarts_skipped=counter(
                "nodesysctl_restarts_skipped",
                "Workloads a restart wave left out, by reason (paused, eviction_blocked, "
                "not_restartable, not_selected, already_done).",
                ["policy", "reason"],
            ),
            rollout_halted=gauge(
                "nodesysctl_rollout_halted",
                "1 while the policy's rollout is halted by maxFailedNodes (no new checks).",
                ["policy"],
            ),
            reconcile_errors=counter(
                "nodesysctl_reconcile_errors",
                "Reconcile passes that failed (an API error mid-pass); retried with backoff.",
                ["policy"],
            ),
            reconcile_duration=Histogram(
                "nodesysctl_reconcile_duration_seconds",
                "One reconcile pass of one policy, successful or not.",
                buckets=PASS_BUCKETS,
                registry=registry,
            ),
            node_watch_last_event=gauge(
                "nodesysctl_node_watch_last_event_timestamp_seconds",
                "When the Node list+watch last heard from the API server (a list, an event, "
                "a bookmark, or a watch request's end), Unix time.",
            ),
            leader=Gauge(
                "nodesysctl_leader",
                "1 while this process is the active operator (runs the handlers), else 0.",
                ["identity"],
                registry=exported,
            ),
            build_info=Gauge(
                "nodesysctl_build_info",
                "Always 1; the version that runs.",
                ["version"],
                registry=exported,
            ),
        )
        metrics.build_info.labels(version=_version()).set(1)
        return metrics

    # --- recording, from the results the passes already have ------------------------------

    def seed_policy(self, policy: str) -> None:
        """Every series of `policy` at zero (idempotent: a counter's value is kept)."""
        for state in NODE_STATE_LABELS.values():
            self.nodes.labels(policy, state)
        for result in CHECK_RESULT_LABELS.values():
            self.checks.labels(policy, result)
        self.check_duration.labels(policy)
        self.remediations.labels(policy)
        for kind, result in RESTART_SERIES:
            self.restarts.labels(policy, kind, result)
        for reason in SKIP_REASON_LABELS.values():
            self.restarts_skipped.labels(policy, reason)
        self.rollout_halted.labels(policy)
        self.reconcile_errors.labels(policy)

    def forget_policy(self, policy: str) -> None:
        """Remove every series of a deleted policy (alerts on it resolve, nothing lingers)."""
        for metric in (
            self.nodes,
            self.checks,
            self.check_duration,
            self.remediations,
            self.restarts,
            self.restarts_skipped,
            self.rollout_halted,
            self.reconcile_errors,
        ):
            metric.remove_by_labels({"policy": policy})

    def record_status(self, policy: str, summary: PolicySummary, halted: bool) -> None:
        """The counts a pass writes to the policy status, by state."""
        counts = {
            NodeState.COMPLIANT: summary.compliant - summary.remediated,
            NodeState.REMEDIATED: summary.remediated,
            NodeState.DRIFTED: summary.drifted,
            NodeState.FAILED: summary.failed,
            NodeState.PENDING: summary.pending,
            NodeState.WAITING: summary.waiting,
        }
        for state, count in counts.items():
            self.nodes.labels(policy, NODE_STATE_LABELS[state]).set(count)
        self.rollout_halted.labels(policy).set(1 if halted else 0)

    def record_check(self, policy: str, result: NodeState, seconds: float) -> None:
        """A node result recorded from a finished check, `seconds` after its Job was created."""
        label = CHECK_RESULT_LABELS.get(result)
        if label is None:
            return
        self.checks.labels(policy, label).inc()
        self.check_duration.labels(policy).observe(max(seconds, 0.0))
        if result == NodeState.REMEDIATED:
            self.remediations.labels(policy).inc()

    def record_restart(self, policy: str, kind: str, eviction: EvictionResult | None) -> None:
        """One step carried out: a rollout restart (`eviction` None) or an eviction."""
        result = ROLLOUT_RESTARTED if eviction is None else RESTART_RESULT_LABELS[eviction]
        self.restarts.labels(policy, kind, result).inc()

    def record_wave_plan(self, policy: str, plan: RestartPlan) -> None:
        """What a newly planned wave leaves out (each once per plan)."""
        for step in plan.steps:
            self.record_skipped(policy, step.action)

    def record_skipped(self, policy: str, action: RestartAction) -> None:
        reason = SKIP_REASON_LABELS.get(action)
        if reason is not None:
            self.restarts_skipped.labels(policy, reason).inc()

    def record_pass(self, policy: str, seconds: float, *, failed: bool) -> None:
        self.reconcile_duration.observe(seconds)
        if failed:
            self.reconcile_errors.labels(policy).inc()

    def node_watch_heard(self) -> None:
        self.node_watch_last_event.set_to_current_time()

    def set_leader(self, identity: str, leading: bool) -> None:
        self.leader.labels(identity).set(1 if leading else 0)
        self.operating.leading = leading

    def exposition(self) -> bytes:
        """What `/metrics` answers (the text format)."""
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return importlib.metadata.version("nodesysctl")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


# The process's metrics: every layer records into these.
OPERATOR_METRICS = OperatorMetrics.create()


def process_identity() -> str:
    """This process's `identity` label: the host name, which in a pod is the pod's name."""
    return socket.gethostname()


def set_leader(identity: str, leading: bool) -> None:
    """`nodesysctl_leader{identity}`: the leader election's callback (and, until it is wired,
    `nodesysctl.handlers` at Kopf's start-up)."""
    OPERATOR_METRICS.set_leader(identity, leading)


def parse_bind_address(text: str) -> tuple[str, int] | None:
    """`--metrics-bind-address`: `HOST:PORT`, `:PORT` (every address), or `0` (off)."""
    if text.strip() in ("0", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics bind address {text!r} is not HOST:PORT, :PORT or 0")
    return (host.strip("[]") or "0.0.0.0", int(port))


def serve(address: tuple[str, int], metrics: OperatorMetrics = OPERATOR_METRICS) -> tuple[str, int]:
    """Start `/metrics` on `address` (port 0: any free port); returns where it listens. Raises
    OSError when the address is taken: a misconfigured port is reported at start, not hidden."""
    server, _ = start_http_server(address[1], addr=address[0], registry=metrics.registry)
    host, port = server.server_address[:2]
    return (str(host), int(port))
