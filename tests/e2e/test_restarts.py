"""Restart waves end to end (issue 13): only what the fault touched is restarted, by ownership,
a DaemonSet only on the remediated node, PDBs and system namespaces respected, exactly once and
within the per-policy budget through operator crashes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from devcluster.workloads import daemon_set, pod_disruption_budget
from nodesysctl.labels import RESTARTED_AT
from nodesysctl.planning import NodeState
from tests.kube_json import read_json

from .conftest import OperatorProcess, Policies
from .test_operator import (
    WIDENED,
    deployment,
    enforce_spec,
    events_for,
    node_result,
    ready,
    rollouts,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

RESTART_ME = {"restart": "yes"}
SELECTED = {"selector": {"matchLabels": RESTART_ME}}


def create_daemon_set(
    api: Any, namespace: str, name: str, selector: dict[str, str], nodes: int
) -> None:
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_daemon_set(namespace, daemon_set(name, selector, RESTART_ME))

    def running() -> bool:
        return len(pods_of(api, namespace, name, running_only=True)) == nodes

    wait_for(running, timeout=90, what=f"daemonset {namespace}/{name} on {nodes} nodes")


def pods_of(api: Any, namespace: str, app: str, *, running_only: bool = False) -> dict[str, str]:
    """node -> pod uid of the pods labelled app=<app> (not terminating)."""
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=f"app={app}"
    )
    return {
        pod["spec"].get("nodeName", ""): pod["metadata"]["uid"]
        for pod in pods["items"]
        if not pod["metadata"].get("deletionTimestamp")
        and (not running_only or (pod.get("status") or {}).get("phase") == "Running")
    }


def template_restarted_at(api: Any, namespace: str, kind: str, name: str) -> str | None:
    apps: Any = client.AppsV1Api(api)
    read = (
        apps.read_namespaced_daemon_set if kind == "DaemonSet" else apps.read_namespaced_deployment
    )
    body = read_json(read, name, namespace)
    annotations = body["spec"]["template"]["metadata"].get("annotations") or {}
    value: str | None = annotations.get(RESTARTED_AT)
    return value


@pytest.fixture
def kube_system_deployments(api_client: Any) -> Iterator[list[str]]:
    """Deployments a test creates in kube-system, deleted afterwards."""
    made: list[str] = []
    yield made
    apps: Any = client.AppsV1Api(api_client)
    for name in made:
        with contextlib.suppress(ApiException):
            apps.delete_namespaced_deployment(name, "kube-system")


def test_only_what_the_fault_touched_is_restarted_by_ownership(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
    kube_system_deployments: list[str],
) -> None:
    # The policy selects only the drifted node; the DaemonSet runs on both.
    only_drifted = {**node_factory.selector, "fix-me": "yes"}
    drifted: SimulatedNode = node_factory({"fix-me": "yes"}, sysctls=WIDENED)
    healthy: SimulatedNode = node_factory()
    deployment(api_client, test_namespace, "host-web", drifted.name, RESTART_ME)
    deployment(api_client, test_namespace, "pod-web", drifted.name, RESTART_ME, host_network=False)
    create_daemon_set(api_client, test_namespace, "host-agent", node_factory.selector, nodes=2)
    # A DaemonSet whose budget allows no eviction at all: minAvailable equals its pods.
    guard_selector = only_drifted
    policy_api: Any = client.PolicyV1Api(api_client)
    policy_api.create_namespaced_pod_disruption_budget(
        test_namespace, pod_disruption_budget("guarded", "guarded", 1)
    )
    create_daemon_set(api_client, test_namespace, "guarded", guard_selector, nodes=1)
    system = f"{test_id}-sys"[:63]
    kube_system_deployments.append(system)
    deployment(api_client, "kube-system", system, drifted.name, RESTART_ME)
    agents_before = pods_of(api_client, test_namespace, "host-agent")
    guarded_before = pods_of(api_client, test_namespace, "guarded")

    name = f"{test_id}-touched"
    policies.create(
        name,
        enforce_spec(
            only_drifted,
            restart={**SELECTED, "kinds": ["Deployment", "DaemonSet"], "namespaces": []},
        ),
    )
    body = wait_policy(
        policies,
        name,
        lambda b: ready(b) and "lastRestart" in b["status"],
        "Ready with a completed restart wave",
        timeout=240,
    )
    fixed = node_result(api_client, drifted.name, name)
    assert fixed is not None
    assert fixed.status == NodeState.REMEDIATED

    # The hostNetwork Deployment on the remediated node: one rollout restart.
    assert rollouts(api_client, test_namespace, "host-web")[0] == 2
    # The pod-network one on the same node: left alone, and the policy's Event says why.
    assert rollouts(api_client, test_namespace, "pod-web") == (1, None)
    [summary] = events_for(api_client, name, "RestartWaveComplete")
    assert "a pod with its own network namespace never had the node's" in summary["message"]
    # The hostNetwork DaemonSet: only the remediated node's pod was replaced, no rollout.
    wait_for(
        lambda: len(pods_of(api_client, test_namespace, "host-agent", running_only=True)) == 2,
        timeout=60,
        what="host-agent back on both nodes",
    )
    agents_after = pods_of(api_client, test_namespace, "host-agent")
    assert agents_after[healthy.name] == agents_before[healthy.name]
    assert agents_after[drifted.name] != agents_before[drifted.name]
    assert template_restarted_at(api_client, test_namespace, "DaemonSet", "host-agent") is None
    assert events_for(api_client, "host-agent", "Evicted")
    # The guarded DaemonSet: the eviction was retried, then reported; its pod stays.
    assert pods_of(api_client, test_namespace, "guarded") == guarded_before
    [blocked] = events_for(api_client, "guarded", "EvictionBlocked")
    assert "eviction refused 5 times" in blocked["message"]
    status = body["status"]["lastRestart"]
    left = {entry["workload"]: entry for entry in status["notRestarted"]}
    assert left[f"DaemonSet/{test_namespace}/guarded"]["action"] == "EvictionBlocked"
    # kube-system is not restarted unless named.
    assert rollouts(api_client, "kube-system", system) == (1, None)
    assert left[f"Deployment/kube-system/{system}"]["action"] == "NotSelected"
    assert sorted(status["workloads"]) == sorted(
        [f"Deployment/{test_namespace}/host-web", f"DaemonSet/{test_namespace}/host-agent"]
    )
    assert status["evicted"] == 1


def test_a_system_namespace_named_in_the_policy_is_restarted(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
    kube_system_deployments: list[str],
) -> None:
    drifted: SimulatedNode = node_factory(sysctls=WIDENED)
    system = f"{test_id}-named"[:63]
    kube_system_deployments.append(system)
    deployment(api_client, "kube-system", system, drifted.name, RESTART_ME)
    name = f"{test_id}-named"
    policies.create(
        name,
        enforce_spec(node_factory.selector, restart={**SELECTED, "namespaces": ["kube-system"]}),
    )
    wait_policy(policies, name, lambda b: ready(b) and "lastRestart" in b["status"],
                "Ready with a completed restart wave")  # fmt: skip
    assert rollouts(api_client, "kube-system", system)[0] == 2


def restarted(api: Any, namespace: str, names: list[str]) -> dict[str, int]:
    """name -> ReplicaSets beyond the first (rollout restarts made), for the restarted ones."""
    counts = {name: rollouts(api, namespace, name)[0] - 1 for name in names}
    return {name: count for name, count in counts.items() if count}


def test_an_operator_killed_mid_wave_three_times_restarts_nothing_twice_within_the_budget(
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    """Four affected Deployments, a budget of three an hour, one restart per 10 s cluster-wide:
    the operator is SIGKILLed after each restart it makes, and every new process starts with a
    full in-memory rate limiter; the budget in the status still holds."""
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    names = [f"app{index}" for index in range(4)]
    for app in names:
        deployment(api_client, test_namespace, app, node.name, RESTART_ME)
    slow = ("--restarts-per-minute", "6", "--restart-burst", "1")
    current = start_operator(*slow)
    name = f"{test_id}-budget"
    policies.create(
        name,
        enforce_spec(
            node_factory.selector,
            restart={**SELECTED, "namespaces": [test_namespace], "maxPerHour": 3},
        ),
    )
    for made in (1, 2, 3):

        def at_least(count: int = made) -> bool:
            return len(restarted(api_client, test_namespace, names)) >= count

        wait_for(at_least, timeout=120, what=f"{made} restarted")
        current.kill()
        current = start_operator(*slow)
    time.sleep(30)  # three more tokens of the cluster-wide limiter: the budget must hold
    counts = restarted(api_client, test_namespace, names)
    assert all(count == 1 for count in counts.values()), f"restarted twice: {counts}"
    assert len(counts) == 3, counts
    status = policies.get(name)["status"]
    assert status["restartBudget"]["remaining"] == 0
    assert status["restartWave"]["remaining"] == 1
    assert "lastRestart" not in status  # the wave waits for the budget, it is not complete
