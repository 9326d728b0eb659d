"""The restart-wave benchmark: what one wave costs in API requests, and how long it takes.

`python -m bench.restart_wave` (also part of `python -m bench`): 1000 remediated nodes, 500
Deployments of 3 replicas (a tenth hostNetwork), 5 DaemonSets (2 hostNetwork) on every node.
The operator's own code makes the wave - `PolicyReconciler` and `Kube`, the REST calls as they
go out - against an in-memory model of that cluster behind `Kube`'s REST layer (`ModelRest`),
which counts every request by verb and resource and answers as the API server would (paged
lists with `limit`/`continue`, the `spec.hostNetwork` field selector, 404s, evictions that
delete the pod). The clock is simulated: each pass runs when the previous one asked, so the
wave's duration at the default rate limit is the operator's own pacing, not a formula.

It measures requests, not the API server's time: a real API server's latency adds to each
pass (one LIST page of 500 pods is ~5-20 ms on the dev cluster).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

from kubernetes.client.exceptions import ApiException

from nodesysctl.api import DEFAULT_RESTARTS_PER_HOUR, MAX_RESTARTS_PER_HOUR, parse_spec
from nodesysctl.config import OperatorConfig
from nodesysctl.jobs import JobSettings
from nodesysctl.kube import Kube, Rest
from nodesysctl.pacing import RestartLimiter
from nodesysctl.planning import NodeFacts, NodeResult, NodeState, format_time, spec_hash
from nodesysctl.reconcile import PolicyReconciler, Snapshot

START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = "bench-restarts"
NAMESPACE = "apps"


def _owner(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"uid-{name}",
             "controller": True}]  # fmt: skip


class Model:
    """The cluster the wave runs against: pods, ReplicaSets, workloads (plain bodies)."""

    def __init__(self, nodes: int, deployments: int, replicas: int, daemon_sets: int) -> None:
        self.nodes = [f"n{index:04}" for index in range(nodes)]
        started = format_time(START - timedelta(hours=1))
        self.workloads: dict[tuple[str, str], dict[str, Any]] = {}
        self.replica_sets: list[dict[str, Any]] = []
        self.pods: dict[str, dict[str, Any]] = {}
        for index in range(deployments):
            name = f"deploy-{index:03}"
            host = index % 10 == 0  # a tenth hostNetwork
            self._workload("deployments", name, host)
            rs = f"{name}-rs"
            self.replica_sets.append(
                {"metadata": {"name": rs, "namespace": NAMESPACE, "uid": f"uid-{rs}",
                              "ownerReferences": _owner("Deployment", name)}}
            )  # fmt: skip
            for replica in range(replicas):
                node = self.nodes[(index * replicas + replica) % nodes]
                self._pod(f"{name}-{replica}", node, host, _owner("ReplicaSet", rs), started)
        for index in range(daemon_sets):
            name = f"daemon-{index}"
            host = index < 2  # 2 of 5 hostNetwork
            self._workload("daemonsets", name, host)
            for node in self.nodes:
                self._pod(f"{name}-{node}", node, host, _owner("DaemonSet", name), started)
        self.requests: Counter[str] = Counter()  # HTTP requests (a list's every page)
        self.lists = 0  # list operations
        self.patched: Counter[str] = Counter()
        self.evicted: Counter[str] = Counter()
        self.status: dict[str, Any] = {}

    def _workload(self, plural: str, name: str, host: bool) -> None:
        self.workloads[(plural, name)] = {
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                         "labels": {"tier": "host" if host else "pod"}},
            "spec": {"template": {"metadata": {"annotations": {}}, "spec": {}}},
        }  # fmt: skip

    def _pod(
        self, name: str, node: str, host: bool, owners: list[dict[str, Any]], started: str
    ) -> None:
        self.pods[name] = {
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                         "ownerReferences": owners},
            "spec": {"nodeName": node, "hostNetwork": host},
            "status": {"phase": "Running", "startTime": started},
        }  # fmt: skip


class ModelRest(Rest):
    """`Rest` answered from the model, every request counted as "VERB resource"."""

    def __init__(self, model: Model) -> None:  # no ApiClient: nothing leaves the process
        self.model = model

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        parts = [unquote(part) for part in path.strip("/").split("/")]
        model = self.model
        if method == "GET" and path.endswith(("/pods", "/replicasets")) and "continue" not in query:
            model.lists += 1  # a new list (its later pages carry `continue`)
        if method == "GET" and path == "/api/v1/pods":
            model.requests["LIST pods"] += 1
            pods = list(model.pods.values())
            if query.get("fieldSelector") == "spec.hostNetwork=true":
                pods = [p for p in pods if p["spec"]["hostNetwork"]]
            return _page(pods, query)
        if method == "GET" and path == "/apis/apps/v1/replicasets":
            model.requests["LIST replicasets"] += 1
            return _page(model.replica_sets, query)
        if parts[:3] == ["apis", "apps", "v1"] and len(parts) == 7:
            plural, name = parts[5], parts[6]
            model.requests[f"{'GET' if method == 'GET' else method} {plural}"] += 1
            found = model.workloads.get((plural, name))
            if found is None:
                raise ApiException(status=404, reason="Not Found")
            if method == "PATCH":
                model.patched[f"{plural}/{name}"] += 1
                annotations = body["spec"]["template"]["metadata"]["annotations"]
                found["spec"]["template"]["metadata"]["annotations"].update(annotations)
            return found
        if method == "POST" and parts[-1] == "eviction":
            model.requests["CREATE pods/eviction"] += 1
            pod = model.pods.pop(parts[-2], None)
            if pod is None:
                raise ApiException(status=404, reason="Not Found")
            model.evicted[pod["spec"]["nodeName"]] += 1
            return {}
        if method == "POST" and parts[-1] == "events":
            model.requests["CREATE events"] += 1
            return {}
        if method == "PATCH" and parts[-1] == "status":
            model.requests["PATCH nodesysctlpolicies/status"] += 1
            for key, value in body["status"].items():
                if value is None:
                    model.status.pop(key, None)
                else:
                    model.status[key] = value
            return {}
        if method == "PATCH" and parts[:3] == ["api", "v1", "nodes"]:
            model.requests["PATCH nodes"] += 1
            return {}
        raise AssertionError(f"the wave made a request the model does not serve: {method} {path}")


def _page(items: list[dict[str, Any]], query: Mapping[str, Any]) -> dict[str, Any]:
    limit = int(query.get("limit") or len(items) or 1)
    start = int(query.get("continue") or 0)
    chunk = items[start : start + limit]
    more = start + limit < len(items)
    return {"items": chunk, "metadata": {"continue": str(start + limit) if more else ""}}


class ModelKube(Kube):
    def __init__(self, rest: ModelRest) -> None:
        self.rest = rest


def run_wave(
    *,
    nodes: int,
    deployments: int,
    replicas: int,
    daemon_sets: int,
    per_minute: float,
    burst: int,
    per_hour: int,
    max_passes: int = 100_000,
) -> dict[str, Any]:
    """One complete wave; its requests by verb, its passes, its simulated duration."""
    model = Model(nodes, deployments, replicas, daemon_sets)
    spec: dict[str, Any] = {
        # No recheck comes due during even the slowest wave (it would pause the wave).
        "rollout": {"recheckInterval": "168h"},
        "restart": {
            "kinds": ["Deployment", "StatefulSet", "DaemonSet"],
            "selector": {},
            "maxPerHour": per_hour,
        },
    }
    parsed = parse_spec(spec)
    fixed = START - timedelta(minutes=1)
    result = NodeResult(NodeState.REMEDIATED, spec_hash(parsed), "boot", fixed, "job", "", True)
    facts = [NodeFacts(name, {}, "boot", {POLICY: result}) for name in model.nodes]
    elapsed = [0.0]
    limiter = RestartLimiter(per_minute, burst, clock=lambda: elapsed[0])
    reconciler = PolicyReconciler(
        ModelKube(ModelRest(model)),
        JobSettings(namespace="nodesysctl-jobs"),
        limiter,
        protected_namespaces=(OperatorConfig().operator_namespace,),
    )
    passes = 0
    cpu = time.process_time()
    wall = time.monotonic()
    while passes < max_passes:
        passes += 1
        snap = Snapshot(POLICY, "uid-policy", 1, "2026-11-01T00:00:00Z", spec, dict(model.status),
                        facts, [], {}, [])  # fmt: skip
        outcome = reconciler.run_once(snap, START + timedelta(seconds=elapsed[0]))
        if "lastRestart" in model.status:
            break
        elapsed[0] += outcome.delay
    cpu = time.process_time() - cpu
    host_pods_per_node = 2
    expected_evictions = nodes * host_pods_per_node
    expected_patches = math.ceil(deployments / 10)
    list_requests = sum(n for verb, n in model.requests.items() if verb.startswith("LIST"))
    return {
        "nodes": nodes,
        "deployments": deployments,
        "replicas": replicas,
        "daemon_sets": daemon_sets,
        "rate": {"per_minute": per_minute, "burst": burst, "per_hour": per_hour},
        "requests": dict(sorted(model.requests.items())),
        "lists": model.lists,
        "list_requests": list_requests,
        "patches": sum(model.patched.values()),
        "evictions": sum(model.evicted.values()),
        "expected_patches": expected_patches,
        "expected_evictions": expected_evictions,
        "restarted_twice": sum(1 for n in model.patched.values() if n > 1),
        "passes": passes,
        "wave_seconds": round(elapsed[0], 1),
        "operator_cpu_seconds": round(cpu, 2),
        "wall_seconds": round(time.monotonic() - wall, 2),
        "complete": "lastRestart" in model.status,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'rate limit':>24} {'passes':>6} {'LISTs':>5} {'(pages)':>7} "
        f"{'GET':>5} {'PATCH wl':>8} {'evict':>6} {'events':>6} {'status':>6} {'nodes':>5} "
        f"{'wave':>10}",
    ]
    for row in rows:
        rate = row["rate"]
        req = row["requests"]
        gets = sum(n for verb, n in req.items() if verb.startswith("GET"))
        limit = f"{rate['per_minute']:g}/min+{rate['burst']}, {rate['per_hour']}/h"
        lines.append(
            f"{limit:>24} {row['passes']:>6} {row['lists']:>5} {row['list_requests']:>7} "
            f"{gets:>5} {row['patches']:>8} {row['evictions']:>6} "
            f"{req.get('CREATE events', 0):>6} {req.get('PATCH nodesysctlpolicies/status', 0):>6} "
            f"{req.get('PATCH nodes', 0):>5} {_duration(row['wave_seconds']):>10}"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def measure(nodes: int = 1000, deployments: int = 500, replicas: int = 3) -> list[dict[str, Any]]:
    """The wave with the rate limit raised (requests), then at the defaults (duration)."""
    defaults = OperatorConfig()
    raised = dict(per_minute=1e9, burst=10**6, per_hour=MAX_RESTARTS_PER_HOUR)
    cluster_default = dict(
        per_minute=defaults.restarts_per_minute,
        burst=defaults.restart_burst,
        per_hour=MAX_RESTARTS_PER_HOUR,
    )
    all_defaults = {**cluster_default, "per_hour": DEFAULT_RESTARTS_PER_HOUR}
    common = dict(nodes=nodes, deployments=deployments, replicas=replicas, daemon_sets=5)
    return [
        run_wave(**common, **rates)  # type: ignore[arg-type]
        for rates in (raised, cluster_default, all_defaults)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.restart_wave", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)
    rows = measure(args.nodes, args.deployments, args.replicas)
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
    raised = rows[0]
    ok = (
        raised["lists"] <= 3
        and raised["patches"] == raised["expected_patches"]
        and raised["evictions"] == raised["expected_evictions"]
        and all(row["restarted_twice"] == 0 and row["complete"] for row in rows)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
