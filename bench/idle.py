"""The idle operator at scale: memory, CPU, steady-state API traffic and ignored Node updates.

"Idle" = one policy selecting every Node, and every Node already carries a current Compliant
result for it (pre-seeded annotations, as the operator itself writes them), so nothing is due
for an hour. A fresh operator process is started at each size, so its peak RSS (VmHWM) covers
its start-up (the initial list of every Node) and the idle window.

The operator serves /metrics (on by default) and `MetricsScraper` scrapes it every
`scrape_interval` seconds through the idle window and the heartbeats, as Prometheus would (30 s
in the shipped ServiceMonitor; 1 s here, to make its cost visible); the last scrape's node
counts must equal the policy's status.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from devcluster.nodes import SimulatedNode
from devcluster.prometheus import free_port
from devcluster.waiting import wait_for
from nodesysctl.api import parse_spec
from nodesysctl.cli import METRICS_FLAG
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX
from nodesysctl.planning import NodeResult, NodeState, spec_hash

from .convergence import Fleet
from .harness import JOB_NAMESPACE, WRITE_VERBS, BenchCluster, utcnow
from .health import NodeHealth, RunStoppedError

IDLE_POLICY = "bench-idle"
IDLE_SPEC: dict[str, Any] = {
    "remediation": {"mode": "Enforce"},
    "rollout": {"maxConcurrent": "10%", "recheckInterval": "1h"},
}


def seed_results(bench: BenchCluster, nodes: list[SimulatedNode]) -> float:
    """Write a current Compliant result of the idle policy on each node; returns seconds."""
    start = time.monotonic()
    current = spec_hash(parse_spec(IDLE_SPEC))
    now = datetime.now(UTC)
    patches = [
        (
            node.name,
            {
                "metadata": {
                    "annotations": {
                        ANNOTATION_RESULT_PREFIX + IDLE_POLICY: NodeResult(
                            NodeState.COMPLIANT, current, node.boot_id, now, "seeded", "seeded"
                        ).to_annotation()
                    }
                }
            },
        )
        for node in nodes
    ]
    bench.patch_nodes(patches, status=False)
    return time.monotonic() - start


def image_list(count: int) -> list[dict[str, Any]]:
    """`status.images` as a kubelet reports them (it keeps the 50 biggest by default,
    nodeStatusMaxImages): real Nodes are 10-15 KiB of JSON mostly because of this list, the
    simulated ones 2 KiB without it. Memory per Node is measured with realistic bodies."""
    images = []
    for index in range(count):
        repo = f"registry.example.com/team-{index % 7}/service-{index}"
        digest = hashlib.sha256(repo.encode()).hexdigest()
        images.append(
            {
                "names": [f"{repo}@sha256:{digest}", f"{repo}:v1.{index}.0"],
                "sizeBytes": 10_000_000 + 1_000_003 * index,
            }
        )
    return images


def seed_images(bench: BenchCluster, nodes: list[SimulatedNode], count: int) -> None:
    if count:
        images = image_list(count)
        bench.patch_nodes([(n.name, {"status": {"images": images}}) for n in nodes], status=True)


def heartbeat_patches(nodes: list[SimulatedNode], updates: int) -> list[tuple[str, Any]]:
    """Status patches that change only the Ready condition's lastHeartbeatTime (what a real
    kubelet writes every nodeStatusUpdateFrequency, or on every change of a condition)."""
    patches = []
    for index in range(updates):
        node = nodes[index % len(nodes)]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patches.append(
            (
                node.name,
                {
                    "status": {
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "message": "simulated kubelet is ready",
                                "lastHeartbeatTime": stamp,
                            }
                        ]
                    }
                },
            )
        )
    return patches


class MetricsScraper:
    """GET /metrics every `interval` seconds in a thread of its own, until `stop`."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.stopped = threading.Event()
        self.seconds: list[float] = []
        self.errors: list[str] = []
        self.last = ""
        self.thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)

    def start(self) -> MetricsScraper:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopped.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    self.last = answer.read().decode()
                self.seconds.append(time.monotonic() - start)
            except OSError as exc:
                self.errors.append(str(exc))
            self.stopped.wait(max(0.0, self.interval - (time.monotonic() - start)))

    def stop(self) -> dict[str, Any]:
        self.stopped.set()
        self.thread.join(timeout=30)
        return {
            "scrape_interval_seconds": self.interval,
            "scrapes": len(self.seconds),
            "scrape_errors": len(self.errors),
            "scrape_ms_mean": round(1000 * sum(self.seconds) / max(len(self.seconds), 1), 2),
            "scrape_ms_max": round(1000 * max(self.seconds, default=0.0), 2),
            "exposition_bytes": len(self.last.encode()),
        }

    def nodes_in_state(self, policy: str, state: str) -> float | None:
        prefix = f'nodesysctl_nodes{{policy="{policy}",state="{state}"}} '
        for line in self.last.splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return None


def measure_idle(
    bench: BenchCluster,
    fleet: Fleet,
    *,
    window: float,
    heartbeats: int,
    health: NodeHealth,
    scrape_interval: float = 1.0,
    metrics: bool = True,
) -> dict[str, Any]:
    """One idle operator; `metrics=False`: with /metrics off and unscraped (the comparison)."""
    size = len(fleet.nodes)
    health.arm()
    address = f"127.0.0.1:{free_port()}" if metrics else "0"
    operator = bench.start_operator(
        f"operator-idle-{size}{'' if metrics else '-no-metrics'}", METRICS_FLAG, address
    )
    scraper = MetricsScraper(f"http://{address}/metrics", scrape_interval)
    try:
        start = time.monotonic()

        def ready() -> bool:
            health.check()
            status = (bench.policy(IDLE_POLICY) or {}).get("status") or {}
            return status.get("compliant") == size and any(
                c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"]
            )

        wait_for(ready, timeout=600, what=f"{IDLE_POLICY} Ready at {size} nodes", interval=0.5,
                 fatal=(RunStoppedError,))  # fmt: skip
        ready_seconds = time.monotonic() - start
        startup = operator.stats()
        jobs_before = bench.count_jobs(JOB_NAMESPACE)

        # Steady state: nothing changes, nothing is due. The lease renewals of every node go on.
        _wait_cpu_settled(operator, health)  # the pass that wrote Ready and the start-up are over
        bench.wait_audit_flushed()
        if metrics:
            scraper.start()  # scraped from here on: the idle window and the heartbeats
        since = utcnow()
        before = operator.stats()
        health.sleep(window)  # the measurement window itself: nothing is supposed to happen
        after = operator.stats()
        until = utcnow()
        bench.wait_audit_flushed()
        idle_requests = bench.audit.count(since, until)
        idle_writes = {k: v for k, v in idle_requests.items() if k.split()[0] in WRITE_VERBS}
        # Heartbeats: Node status patches that change nothing the operator cares about.
        patches = heartbeat_patches(fleet.nodes, heartbeats)
        hb_since = utcnow()
        hb_before = operator.stats()
        hb_start = time.monotonic()
        bench.patch_nodes(patches, status=True)
        hb_send_seconds = time.monotonic() - hb_start
        # Let the operator drain the watch events: its CPU stops growing.
        _wait_cpu_settled(operator, health)
        hb_after = operator.stats()
        hb_until = utcnow()
        bench.wait_audit_flushed()
        hb_requests = bench.audit.count(hb_since, hb_until)
        hb_writes = {k: v for k, v in hb_requests.items() if k.split()[0] in WRITE_VERBS}
        jobs_after = bench.count_jobs(JOB_NAMESPACE)
        final = operator.stats()
        scraped = scraper.stop() if metrics else {"off": True}
        status = (bench.policy(IDLE_POLICY) or {}).get("status") or {}
        compliant = sum(
            scraper.nodes_in_state(IDLE_POLICY, state) or 0 for state in ("compliant", "remediated")
        )
        return {
            "nodes": size,
            "operator_ready_seconds": round(ready_seconds, 1),
            "rss_mib_after_start": round(startup.rss_mib, 1),
            "peak_rss_mib": round(final.hwm_mib, 1),
            "rss_mib": round(final.rss_mib, 1),
            "startup_cpu_seconds": round(startup.cpu_seconds, 2),
            "idle_window_seconds": window,
            "idle_cpu_percent": round(100 * (after.cpu_seconds - before.cpu_seconds) / window, 2),
            "idle_requests": idle_requests,
            "idle_writes": idle_writes,
            "jobs_created_while_idle": jobs_after - jobs_before,
            "heartbeat_updates": heartbeats,
            "heartbeat_send_seconds": round(hb_send_seconds, 1),
            "heartbeat_cpu_seconds": round(hb_after.cpu_seconds - hb_before.cpu_seconds, 3),
            "cpu_ms_per_ignored_update": round(
                1000 * (hb_after.cpu_seconds - hb_before.cpu_seconds) / heartbeats, 3
            ),
            "heartbeat_requests": hb_requests,
            "heartbeat_writes": hb_writes,
            "metrics": {
                **scraped,
                "nodes_compliant": compliant,
                "matches_status": compliant == status.get("compliant") == size,
            }
            if metrics
            else scraped,
            "node_health": health.finish(),
        }
    finally:
        scraper.stopped.set()
        operator.stop()


def _wait_cpu_settled(operator: Any, health: NodeHealth, quiet: float = 3.0) -> None:
    """Until the operator's CPU time has not grown for `quiet` seconds (events drained)."""
    last = [operator.stats().cpu_seconds, time.monotonic()]

    def settled() -> bool:
        health.check()
        cpu: float = operator.stats().cpu_seconds
        if cpu - last[0] > 0.02:
            last[:] = [cpu, time.monotonic()]
            return False
        return bool(time.monotonic() - last[1] >= quiet)

    wait_for(settled, timeout=300, what="the operator to go quiet", interval=0.5,
             fatal=(RunStoppedError,))  # fmt: skip


def idle_at(
    bench: BenchCluster,
    fleet: Fleet,
    size: int,
    *,
    window: float,
    heartbeats: int,
    node_images: int,
    health: NodeHealth,
    without_metrics: bool = False,
) -> dict[str, Any]:
    grow_seconds = fleet.grow(size) if size > len(fleet.nodes) else 0.0
    wait_seconds = health.wait_healthy(fleet.names())
    seed_seconds = seed_results(bench, fleet.nodes)
    seed_images(bench, fleet.nodes, node_images)
    if bench.policy(IDLE_POLICY) is None:
        bench.create_policy(IDLE_POLICY, IDLE_SPEC)
    result = measure_idle(bench, fleet, window=window, heartbeats=heartbeats, health=health)
    if without_metrics:  # the same fleet, an operator with /metrics off: the cost of metrics
        off = measure_idle(
            bench, fleet, window=window, heartbeats=heartbeats, health=health, metrics=False
        )
        result["without_metrics"] = {k: v for k, v in off.items() if k != "node_health"}
    core: Any = client.CoreV1Api(bench.api)
    sample = core.read_node(fleet.nodes[0].name, _preload_content=False)
    return {
        "node_images": node_images,
        "node_json_bytes": len(sample.data),
        "create_nodes_seconds": round(grow_seconds, 1),
        "wait_nodes_ready_seconds": round(wait_seconds, 1),
        "seed_results_seconds": round(seed_seconds, 1),
        **result,
    }
