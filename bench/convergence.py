"""Convergence: the operator against the floor (the same Jobs created by a plain script).

Nodes are fake /proc/sys trees (no netns). Every node already holds the NodePort range in
ip_local_reserved_ports and the policy's persistence file; every fourth node has its ephemeral
range widened to `1024 65000` (the drift). Before each run every node is reset to exactly that.

Each run is framed by the node-health guard (:mod:`.health`): every node Ready before it,
none leaving Ready during it. With `cordon_percent`, that share of the nodes is cordoned
(`spec.unschedulable`) for the run: the operator reports them Waiting and checks the rest,
the floor skips the same nodes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch

from devcluster.nodes import SimulatedNode
from devcluster.waiting import WaitTimeoutError, wait_for
from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE
from nodesysctl.agent.persist import render_settled
from nodesysctl.api import parse_spec
from nodesysctl.cleanup import CLEANUP_TIMEOUT_SECONDS
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.planning import CheckOrder, CheckReason, job_name
from nodesysctl.ports import PortRange

from .harness import JOB_NAMESPACE, WRITE_VERBS, BenchCluster, diff_counts, utcnow
from .health import NodeHealth, RunStoppedError

TIER_LABEL = "bench.nodesysctl.io/tier"
RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
WIDENED = "1024 65000"
DEFAULT_RANGE = "32768 60999"
DRIFT_EVERY = 4  # every fourth node is drifted
NODE_PORTS = "30000-32767"
FLOOR_NAMESPACE = "bench-floor"


def policy_spec(tiers: list[str], max_concurrent: int | str) -> dict[str, Any]:
    return {
        "nodeSelector": {
            "matchExpressions": [{"key": TIER_LABEL, "operator": "In", "values": tiers}]
        },
        "remediation": {"mode": "Enforce"},
        "rollout": {
            "maxConcurrent": max_concurrent,
            "maxFailedNodes": 10,
            "recheckInterval": "1h",
        },
    }


class Fleet:
    """The simulated nodes, created tier by tier (50, then up to 200, then up to 1000...)."""

    def __init__(self, bench: BenchCluster) -> None:
        self.bench = bench
        self.nodes: list[SimulatedNode] = []
        self.tiers: list[str] = []

    def grow(self, size: int) -> float:
        """Add nodes up to `size`; returns the seconds it took to create them (the health
        guard then waits for them to be Ready)."""
        start = time.monotonic()
        tier = str(size)
        names = [f"bench-{i:05d}" for i in range(len(self.nodes), size)]
        drifted = [n for n in names if int(n.rsplit("-", 1)[1]) % DRIFT_EVERY == 0]
        healthy = [n for n in names if n not in set(drifted)]
        labels = {TIER_LABEL: tier}
        reserved = {RESERVED: NODE_PORTS}
        cluster = self.bench.cluster
        made = cluster.add_nodes(
            drifted, labels, sysctls={**reserved, RANGE: WIDENED}, wait_ready=False
        )
        made += cluster.add_nodes(healthy, labels, sysctls=reserved, wait_ready=False)
        self.nodes += sorted(made, key=lambda n: n.name)
        self.tiers.append(tier)
        return time.monotonic() - start

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def cordon(self, percent: float) -> list[SimulatedNode]:
        """Cordon `percent` % of the nodes, spread over the fleet (every k-th node, starting
        with the first: drifted ones, so a node the operator wrongly touched would show);
        returns them."""
        if percent <= 0:
            return []
        every = max(1, round(100 / percent))
        chosen = self.nodes[::every]
        self._set_unschedulable(chosen, True)
        return chosen

    def uncordon(self, nodes: list[SimulatedNode]) -> None:
        self._set_unschedulable(nodes, False)

    def _set_unschedulable(self, nodes: list[SimulatedNode], value: bool) -> None:
        patches = [(node.name, {"spec": {"unschedulable": value}}) for node in nodes]
        self.bench.patch_nodes(patches, status=False)

    def reset(self, policy: str) -> None:
        """Drift every fourth node again; the rest compliant, with the persistence file."""
        persisted = render_settled([policy], PortRange(32768, 60999), (PortRange(30000, 32767),))
        for index, node in enumerate(self.nodes):
            node.set_sysctl(RANGE, WIDENED if index % 4 == 0 else DEFAULT_RANGE)
            node.set_sysctl(RESERVED, NODE_PORTS)
            directory = node.host_path("/etc/sysctl.d")
            for old in directory.glob("*"):
                old.unlink()
            (directory / COMPOSED_PERSIST_FILE).write_text(persisted)

    def compliant(self) -> int:
        # A fake tree keeps what the agent wrote (a kernel would print a TAB): compare numbers.
        return sum(node.get_sysctl(RANGE).split() == ["32768", "60999"] for node in self.nodes)


@dataclass
class RunResult:
    seconds: float
    jobs: int
    failed_jobs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_floor(
    bench: BenchCluster,
    nodes: list[SimulatedNode],
    tiers: list[str],
    policy: str,
    concurrency: int,
    health: NodeHealth | None = None,
    timeout: float = 1800.0,
) -> RunResult:
    """Create one Job per node of `nodes` (the operator's own Job body) keeping `concurrency`
    in flight, and wait for all of them. No status, no annotations, no events: the lower
    bound. `health` is checked every second; RunStoppedError after `timeout` seconds."""
    spec = parse_spec(policy_spec(tiers, concurrency))
    settings = JobSettings(namespace=FLOOR_NAMESPACE)
    bodies = [
        build_agent_job(
            policy=policy,
            policy_uid="00000000-0000-0000-0000-000000000000",
            spec=spec,
            order=CheckOrder(
                node.name, CheckReason.NEW, job_name(policy, node.name, "floor"), node.boot_id
            ),
            settings=settings,
        )
        for node in nodes
    ]
    for body in bodies:
        body["metadata"].pop("ownerReferences")  # no policy object exists for the floor
    batch: Any = client.BatchV1Api(bench.api)
    finished: queue.Queue[tuple[str, bool]] = queue.Queue()
    stop = threading.Event()
    ready = threading.Event()

    def watch_jobs() -> None:
        seen: set[str] = set()
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        ready.set()
        while not stop.is_set():
            for event in stream.stream(  # type: ignore[no-untyped-call]
                batch.list_namespaced_job, FLOOR_NAMESPACE, timeout_seconds=5, deserialize=False
            ):
                job = event["object"]
                name = job["metadata"]["name"]
                for cond in (job.get("status") or {}).get("conditions") or []:
                    done = cond["type"] in ("Complete", "Failed") and cond["status"] == "True"
                    if done and name not in seen:
                        seen.add(name)
                        finished.put((name, cond["type"] == "Complete"))
                if stop.is_set():
                    break

    watcher = threading.Thread(target=watch_jobs, daemon=True)
    watcher.start()
    ready.wait(10)
    start = time.monotonic()
    pending = list(bodies)
    in_flight = 0
    done = failed = 0
    first_create = 0.0
    try:
        while done < len(bodies):
            while pending and in_flight < concurrency:
                batch.create_namespaced_job(FLOOR_NAMESPACE, pending.pop(0))
                first_create = first_create or time.monotonic() - start
                in_flight += 1
            try:
                _, ok = finished.get(timeout=1.0)
            except queue.Empty:
                if health is not None:
                    health.check()
                if time.monotonic() - start > timeout:
                    raise RunStoppedError(
                        f"the floor did not finish in {timeout:.0f} s ({done}/{len(bodies)} Jobs)"
                    ) from None
                continue
            in_flight -= 1
            done += 1
            failed += not ok
    finally:
        stop.set()
    seconds = time.monotonic() - start
    watcher.join(timeout=15)
    return RunResult(seconds, len(bodies), failed, {"first_job_created": round(first_create, 2)})


def _clean_floor(bench: BenchCluster) -> None:
    bench.cluster.delete_namespace(FLOOR_NAMESPACE)

    def gone() -> bool:
        try:
            client.CoreV1Api(bench.api).read_namespace(FLOOR_NAMESPACE)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, timeout=600, what=f"namespace {FLOOR_NAMESPACE} deleted", interval=1.0)


def run_operator(
    bench: BenchCluster,
    fleet: Fleet,
    policy: str,
    concurrency: int,
    *,
    cordoned: int = 0,
    health: NodeHealth | None = None,
    timeout: float = 1800.0,
) -> RunResult:
    """Apply the policy to a running, idle operator; done when every node that is not
    cordoned is compliant (the cordoned ones waiting) and the status is current. Stopped
    (RunStoppedError) when a node leaves Ready, the rollout halts, or after `timeout` seconds."""
    operator = bench.start_operator(f"operator-{policy}")
    try:
        metrics_before = bench.scrape_metrics()
        cpu_before = operator.stats().cpu_seconds
        since = utcnow()
        start = time.monotonic()
        if health is not None:
            health.arm()
        bench.create_policy(policy, policy_spec(fleet.tiers, concurrency))
        expected = len(fleet.nodes) - cordoned
        seen: dict[str, Any] = {}

        def converged() -> dict[str, Any] | None:
            if health is not None:
                health.check()
            body = bench.policy(policy)
            status = (body or {}).get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            seen.update(status=status, ready=conditions.get("Ready", {}).get("message"))
            degraded = conditions.get("Degraded", {})
            if degraded.get("status") == "True":
                raise RunStoppedError(f"the operator halted the rollout: {degraded.get('message')}")
            ready = conditions.get("Ready", {})
            # Cordoned nodes are Waiting: Ready=False NodesWaiting is the converged state then.
            settled = ready.get("status") == "True" or (
                cordoned and ready.get("reason") == "NodesWaiting"
            )
            done = (
                body is not None
                and settled
                and status.get("observedGeneration") == body["metadata"]["generation"]
                and status.get("compliant") == expected
                and status.get("waiting", 0) == cordoned
            )
            return body if done else None

        try:
            body = wait_for(converged, timeout=timeout, what=f"{policy} Ready", interval=0.25,
                            fatal=(RunStoppedError,))  # fmt: skip
        except WaitTimeoutError:
            counts = {k: seen.get("status", {}).get(k) for k in ("compliant", "waiting", "failed")}
            raise RunStoppedError(
                f"the operator did not converge in {timeout:.0f} s: wanted {expected} compliant "
                f"and {cordoned} waiting, last {counts}, Ready: {seen.get('ready')}"
            ) from None
        except RunStoppedError:
            # Deleted while the operator runs: its finalizer goes with it.
            with contextlib.suppress(Exception):
                bench.delete_policy(policy, timeout=CLEANUP_TIMEOUT_SECONDS + 120)
            raise
        seconds = time.monotonic() - start
        until = utcnow()
        cpu = operator.stats().cpu_seconds - cpu_before
        metrics_after = bench.scrape_metrics()
        bench.wait_audit_flushed()
        requests = bench.audit.count(since, until)
        timeline = bench.audit.timeline(since, until)
        jobs = bench.count_jobs(JOB_NAMESPACE)
        per_node = {k: round(v / len(fleet.nodes), 2) for k, v in requests.items()}
        writes = sum(v for k, v in requests.items() if k.split()[0] in WRITE_VERBS)
        all_clients = diff_counts(metrics_after, metrics_before)
        result = RunResult(
            seconds,
            jobs,
            body["status"].get("failed", 0),
            {
                "operator_cpu_seconds": round(cpu, 2),
                "operator_requests": requests,
                "operator_requests_per_node": per_node,
                "operator_requests_per_node_total": round(
                    sum(requests.values()) / len(fleet.nodes), 2
                ),
                "operator_writes_per_node": round(writes / len(fleet.nodes), 2),
                "all_clients_requests_per_node": {
                    k: round(v / len(fleet.nodes), 2) for k, v in all_clients.items()
                },
                "nodes_compliant_on_disk": fleet.compliant(),
                "operator_timeline": timeline,
            },
        )
        # Deleting the policy cleans every node it covered (cleanup Jobs, bounded by
        # CLEANUP_TIMEOUT_SECONDS); not part of the measurement, but its time is worth knowing.
        deleting = time.monotonic()
        bench.delete_policy(policy, timeout=CLEANUP_TIMEOUT_SECONDS + 120)
        result.extra["policy_delete_seconds"] = round(time.monotonic() - deleting, 1)
        return result
    finally:
        operator.stop()


def converge(
    bench: BenchCluster,
    fleet: Fleet,
    size: int,
    concurrency: int,
    *,
    health: NodeHealth,
    cordon_percent: float = 0.0,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """The floor, then the operator, at `size` nodes; RunStoppedError (with the reason) when the
    node-health guard or a timeout stops either."""
    grow_seconds = fleet.grow(size)
    wait_seconds = health.wait_healthy(fleet.names())
    policy = f"bench-{size}" + ("-cordoned" if cordon_percent else "")
    cordoned = fleet.cordon(cordon_percent)
    checked = [node for node in fleet.nodes if node not in cordoned]
    try:
        fleet.reset(policy)
        bench.cluster.create_namespace(FLOOR_NAMESPACE)
        try:
            health.arm()
            floor = run_floor(bench, checked, fleet.tiers, policy, concurrency, health, timeout)
            floor_health = health.finish()
            floor_compliant = fleet.compliant()
        finally:
            _clean_floor(bench)
        fleet.reset(policy)
        health.wait_healthy(fleet.names())
        operator = run_operator(bench, fleet, policy, concurrency, cordoned=len(cordoned),
                                health=health, timeout=timeout)  # fmt: skip
        operator_health = health.finish()
    finally:
        fleet.uncordon(cordoned)
    cordoned_untouched = sum(node.get_sysctl(RANGE).split() == WIDENED.split() for node in cordoned)
    return {
        "nodes": size,
        "drifted": sum(1 for i in range(size) if i % DRIFT_EVERY == 0),
        "cordon_percent": cordon_percent,
        "cordoned": len(cordoned),
        "cordoned_left_drifted": cordoned_untouched,
        "max_concurrent": concurrency,
        "create_nodes_seconds": round(grow_seconds, 1),
        "wait_nodes_ready_seconds": round(wait_seconds, 1),
        "floor_seconds": round(floor.seconds, 2),
        "floor_jobs": floor.jobs,
        "floor_failed_jobs": floor.failed_jobs,
        "floor_nodes_compliant_on_disk": floor_compliant,
        "floor_first_job_created": floor.extra["first_job_created"],
        "operator_seconds": round(operator.seconds, 2),
        "operator_jobs": operator.jobs,
        "operator_failed_nodes": operator.failed_jobs,
        "ratio": round(operator.seconds / floor.seconds, 3),
        "node_health": {"floor": floor_health, "operator": operator_health},
        **operator.extra,
    }
