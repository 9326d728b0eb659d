"""`python -m bench.leases`: can the simulated kubelet keep N nodes' Leases fresh here?

    python -m bench.leases --nodes 1000                 # the benchmark's cluster (grace 180 s)
    python -m bench.leases --nodes 200 --grace 60       # the test cluster's grace period

On the benchmark's cluster (`BenchCluster`, the same flags as `make bench`) with N fake-/proc
nodes, it measures:

1. **one pass over the Leases** (at most --pass-nodes), back to back: as the old kubelet loop
   renewed them (one thread, the client building a V1Lease from every answer) and as the
   renewal workers do now (raw answer), on one thread and on 8: seconds, renewals/s, client
   CPU per renewal, latency;
2. **the steady state** over a window (after the passes), with the kubelet's own renewal
   workers: the longest gap between two renewals of one node (the creation of its Lease
   counting as the first), the oldest Lease, how late renewals went out, their latency, the
   CPU of the heartbeat process, kube-apiserver, etcd and the controller-manager, and every
   node whose Ready condition left True;
3. **the same under load**: while the benchmark's floor runs agent Jobs on some of the nodes
   (50 in flight, the simulated kubelet's 8 agent processes at a time, in this process): what
   made nodes go NotReady in the issue-12 run; then the passes again while agents run.

The margin is what the node lifecycle controller's grace period has left:
grace - (longest gap + its monitor period). The JSON goes to bench/results/leases-N-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from devcluster.cluster import RENEW_FRACTION_OF_GRACE
from devcluster.controlplane import NODE_MONITOR_PERIOD_SECONDS
from devcluster.kubelet.api_formats import MERGE, micro_now
from devcluster.kubelet.leases import NODE_LEASE_NAMESPACE
from devcluster.kubelet.renewals import percentile
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for

from .convergence import FLOOR_NAMESPACE, run_floor
from .harness import BENCH_GRACE_SECONDS, REPO, BenchCluster, ProcStats

log = logging.getLogger("bench.leases")
_PASS_THREADS = 8


def renew_pass(api: Any, names: list[str], *, threads: int, raw: bool) -> dict[str, Any]:
    """Renew every Lease once, back to back, on `threads` threads sharing one client."""
    coordination: Any = client.CoordinationV1Api(api)

    def renew(name: str) -> float:
        sent = time.perf_counter()
        body = {"spec": {"renewTime": micro_now(), "holderIdentity": name}}
        if raw:
            resp = coordination.patch_namespaced_lease(
                name, NODE_LEASE_NAMESPACE, body, _content_type=MERGE, _preload_content=False
            )
            resp.drain_conn()
            resp.release_conn()
        else:
            coordination.patch_namespaced_lease(name, NODE_LEASE_NAMESPACE, body,
                                                _content_type=MERGE)  # fmt: skip
        return time.perf_counter() - sent

    cpu = time.process_time()
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        latencies = sorted(pool.map(renew, names))
    # The same percentiles as the kubelet's own LeaseStats.
    seconds = time.monotonic() - start
    cpu = time.process_time() - cpu
    return {
        "threads": threads,
        "client": "raw answer" if raw else "V1Lease built from every answer",
        "renewals": len(names),
        "seconds": round(seconds, 2),
        "renewals_per_second": round(len(names) / seconds, 1),
        # This process also runs the kubelet's own workers: a little of it is theirs.
        "client_cpu_ms_per_renewal": round(1000 * cpu / len(names), 2),
        "latency_ms_p50": round(1000 * percentile(latencies, 0.5), 1),
        "latency_ms_p99": round(1000 * percentile(latencies, 0.99), 1),
        "latency_ms_max": round(1000 * latencies[-1], 1),
    }


def component_cpu(bench: BenchCluster) -> dict[str, float]:
    out = {}
    for component in bench.cluster.control_plane.components:
        if component.process is not None and component.running():
            out[component.name] = ProcStats.of(component.process.pid).cpu_seconds
    out["heartbeat process"] = ProcStats.of(bench.cluster.kubelet.heartbeats.pid).cpu_seconds
    return out


def measured(
    bench: BenchCluster, names: list[str], during: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The kubelet's renewals, CPU and Ready changes while `during()` runs, and its result."""
    kubelet = bench.cluster.kubelet
    kubelet.lease_stats(reset=True)
    since = time.time()
    start = time.monotonic()
    cpu = time.process_time()
    components = component_cpu(bench)
    load = os.getloadavg()
    extra = during()
    window = time.monotonic() - start
    stats = kubelet.lease_stats()
    cpu = time.process_time() - cpu
    after = component_cpu(bench)
    changes = kubelet.readiness.changes_since(since)
    unhealthy = kubelet.readiness.unhealthy(names)
    return {
        "window_seconds": round(window, 1),
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "leases": stats.as_dict(),
        "kubelet_process_cpu_percent": round(100 * cpu / window, 1),
        "component_cpu_percent": {
            name: round(100 * (after[name] - components.get(name, 0.0)) / window, 1)
            for name in after
        },
        "ready_changes": [str(change) for change in changes[:20]],
        "ready_changes_total": len(changes),
        "unhealthy_at_end": {name: str(seen) for name, seen in list(unhealthy.items())[:20]},
        **extra,
    }


def passes(bench: BenchCluster, names: list[str]) -> list[dict[str, Any]]:
    """One pass over all Leases as the old loop sent them, and as the workers send them."""
    workers = _PASS_THREADS
    with bench.cluster.control_plane.api_client() as api:
        rows = [
            renew_pass(api, names, threads=1, raw=False),  # the old loop
            renew_pass(api, names, threads=1, raw=True),
            renew_pass(api, names, threads=workers, raw=True),
        ]
    for row in rows:
        log.info("one pass: %s", json.dumps(row))
    return rows


def floor_jobs(bench: BenchCluster, nodes: list[SimulatedNode], policy: str) -> dict[str, Any]:
    """The floor's agent Jobs on `nodes`, 50 in flight."""
    result = run_floor(bench, nodes, ["leases"], policy, 50)
    return {"jobs": result.jobs, "failed_jobs": result.failed_jobs, "seconds": result.seconds}


def passes_under_load(
    bench: BenchCluster, nodes: list[SimulatedNode], names: list[str]
) -> dict[str, Any]:
    """The passes over `names` while the floor's agents run on `nodes` (once 50 Jobs are in)."""
    floor: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: floor.update(floor_jobs(bench, nodes, "bench-leases-passes"))
    )
    thread.start()
    wait_for(lambda: bench.count_jobs(FLOOR_NAMESPACE) >= 50, timeout=120, what="floor Jobs")
    rows = passes(bench, names)
    thread.join()
    return {"floor": floor, "passes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.leases",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--grace", type=float, default=BENCH_GRACE_SECONDS,
                        help="--node-monitor-grace-period, seconds")  # fmt: skip
    parser.add_argument("--parallelism", type=int, default=None,
                        help="renewal workers to start with (default: the kubelet's)")  # fmt: skip
    parser.add_argument("--window", type=float, default=120.0, help="steady state, seconds")
    parser.add_argument("--loaded-jobs", type=int, default=200,
                        help="agent Jobs run during the loaded window (0: none)")  # fmt: skip
    parser.add_argument("--pass-nodes", type=int, default=1000,
                        help="Leases per one-pass measurement")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("devcluster").setLevel(logging.WARNING)
    names = [f"lease-{i:05d}" for i in range(args.nodes)]
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "nodes": args.nodes,
        "grace_seconds": args.grace,
        "renew_period_seconds": RENEW_FRACTION_OF_GRACE * args.grace,
        "node_monitor_period_seconds": NODE_MONITOR_PERIOD_SECONDS,
    }
    options = {"renew_parallelism": args.parallelism} if args.parallelism else {}
    with BenchCluster(grace_seconds=args.grace, **options) as bench:
        kubelet = bench.cluster.kubelet
        start = time.monotonic()
        nodes = bench.cluster.add_nodes(names, {"bench.nodesysctl.io/leases": "yes"},
                                        wait_ready=False)  # fmt: skip
        wait_for(lambda: not kubelet.readiness.unhealthy(names), timeout=600,
                 what=f"{args.nodes} nodes Ready", interval=1.0)  # fmt: skip
        results["register_seconds"] = round(time.monotonic() - start, 1)
        results["leases_while_registering"] = kubelet.lease_stats(reset=True).as_dict()
        log.info("%d nodes Ready in %.1f s", args.nodes, results["register_seconds"])

        results["passes_idle"] = passes(bench, names[: args.pass_nodes])

        def idle() -> dict[str, Any]:
            time.sleep(args.window)  # the window itself: the kubelet's workers renew meanwhile
            return {}

        # Apart from the passes, so that the CPU of the window is the workers' renewals only.
        results["idle"] = measured(bench, names, idle)
        if args.loaded_jobs:
            bench.cluster.create_namespace(FLOOR_NAMESPACE)
            some = nodes[: args.loaded_jobs]
            results["under_load"] = measured(
                bench, names, lambda: {"floor": floor_jobs(bench, some, "bench-leases")}
            )
            # Separately, so that the passes' requests do not count in the workers' window.
            results["passes_under_load"] = passes_under_load(bench, some, names[: args.pass_nodes])
    windows = [results[key]["leases"] for key in ("idle", "under_load") if key in results]
    worst = max(max(w["max_gap_seconds"], w["oldest_lease_age_seconds"]) for w in windows)
    results["margin_seconds"] = round(args.grace - worst - NODE_MONITOR_PERIOD_SECONDS, 1)
    # What the workers reached in one pass (under load if measured), at most half of it spent
    # on Leases so that agent runs and the operator fit beside them.
    loaded = results.get("passes_under_load", {"passes": results["passes_idle"]})["passes"][-1][
        "renewals_per_second"
    ]
    results["nodes_this_machine_holds"] = int(loaded * results["renew_period_seconds"] / 2)
    out = args.out or (
        REPO / "bench" / "results" / f"leases-{args.nodes}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
