"""Readiness taints end to end (issue 16): a node that registers with
`nodesysctl.io/unverified:NoSchedule` takes no workload until a policy naming the taint has
verified it. The real scheduler keeps the workload's pod Pending; the operator (as its
ServiceAccount only, so through the admission fence) fixes the node and removes the taint; the
pod is then scheduled there. A failing check keeps the taint and says why; a deleted policy
releases it; a reboot with `retaintOnReboot` brings it back until the recheck passes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster.cluster import DevCluster
from devcluster.install import service_account_kubeconfig
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from devcluster.workloads import deployment as deployment_body
from nodesysctl.labels import READINESS_TAINT_PREFIX
from nodesysctl.planning import NodeState, parse_time
from tests.kube_json import read_json

from .conftest import OperatorProcess, Policies
from .test_operator import (
    KERNEL_DEFAULT_RANGE,
    RANGE,
    WIDENED,
    enforce_spec,
    events_for,
    policy_jobs,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UNVERIFIED = {"key": READINESS_TAINT_PREFIX, "effect": "NoSchedule"}
# Another writer's taint, tolerated by the workload and the agent: it must survive every
# update of ours.
DEDICATED = {"key": "example.com/dedicated", "value": "web", "effect": "NoSchedule"}
TOLERATE_DEDICATED = {**DEDICATED, "operator": "Equal"}


def taints(api: Any, node: str) -> list[dict[str, Any]]:
    body = read_json(client.CoreV1Api(api).read_node, node)
    return [
        {k: v for k, v in t.items() if k != "timeAdded"}
        for t in (body.get("spec") or {}).get("taints") or []
    ]


def carries_ours(api: Any, node: str) -> bool:
    return any(t["key"] == READINESS_TAINT_PREFIX for t in taints(api, node))


def workload(api: Any, namespace: str, name: str, node: str) -> None:
    """A pod-network Deployment pinned to `node`, tolerating DEDICATED but not ours."""
    body = deployment_body(name, node)
    body["spec"]["template"]["spec"]["tolerations"] = [TOLERATE_DEDICATED]
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, body)


def the_pod(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    pods = read_json(client.CoreV1Api(api).list_namespaced_pod, namespace,
                     label_selector=f"app={name}")["items"]  # fmt: skip
    return dict(pods[0]) if len(pods) == 1 else None


def scheduled(pod: dict[str, Any]) -> dict[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond["type"] == "PodScheduled":
            return dict(cond)
    return {}


def wait_unschedulable(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The scheduler has tried and refused the pod for a taint (ours: the only one on the node
    the pod does not tolerate; newer schedulers no longer name the taint)."""

    def refused() -> dict[str, Any] | None:
        pod = the_pod(api, namespace, name)
        cond = scheduled(pod) if pod else {}
        for_a_taint = "untolerated taint" in cond.get("message", "")
        return pod if cond.get("reason") == "Unschedulable" and for_a_taint else None

    return wait_for(refused, timeout=60, what=f"pod of {name} unschedulable for our taint")


@pytest.fixture
def fenced_operator(
    devcluster: DevCluster, start_operator: Callable[..., OperatorProcess], tmp_path: Path
) -> OperatorProcess:
    """The operator as its ServiceAccount only: every Node write goes through the fence."""
    return start_operator(kubeconfig=service_account_kubeconfig(devcluster, tmp_path / "sa"))


def test_a_tainted_node_takes_no_workload_until_it_is_fixed_then_loses_only_our_taint(
    fenced_operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED, taints=[DEDICATED, UNVERIFIED])
    workload(api_client, test_namespace, "web", node.name)
    pending = wait_unschedulable(api_client, test_namespace, "web")
    assert not pending["spec"].get("nodeName")

    name = f"{test_id}-ready"
    policies.create(name, enforce_spec(node_factory.selector, readiness={},
                                       job={"tolerations": [TOLERATE_DEDICATED]}))  # fmt: skip
    result = wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    wait_for(lambda: not carries_ours(api_client, node.name), timeout=60,
             what="our taint removed")  # fmt: skip
    assert taints(api_client, node.name) == [DEDICATED]  # the other writer's taint stays
    [removed] = events_for(api_client, node.name, "ReadinessTaintRemoved")
    assert f"verified by {name}" in removed["message"]

    def bound() -> dict[str, Any] | None:
        pod = the_pod(api_client, test_namespace, "web")
        return pod if pod and scheduled(pod).get("status") == "True" else None

    pod = wait_for(bound, timeout=60, what="the workload's pod scheduled")
    assert pod["spec"]["nodeName"] == node.name
    # It was scheduled only after the node was fixed (both to the second).
    at: datetime = parse_time(scheduled(pod)["lastTransitionTime"])
    assert at >= result.checked_at.replace(microsecond=0)
    # The agent tolerated the policy's tolerations and our taint by key, nothing else.
    [job] = policy_jobs(api_client, name)
    tolerations = job["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [TOLERATE_DEDICATED,
                           {"key": READINESS_TAINT_PREFIX, "operator": "Exists"}]  # fmt: skip
    assert "403" not in fenced_operator.log()


def test_a_failing_check_keeps_the_taint_and_says_why_and_a_deleted_policy_releases_it(
    fenced_operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    broken: SimulatedNode = node_factory(netns=False, taints=[UNVERIFIED])
    (broken.proc_sys / "net/ipv4/ip_local_port_range").write_text("garbage\n")
    workload(api_client, test_namespace, "web", broken.name)
    name = f"{test_id}-fails"
    policies.create(name, enforce_spec(node_factory.selector, readiness={}))
    failed = wait_node_state(api_client, broken.name, name, NodeState.FAILED)
    assert "garbage" in failed.message

    def kept() -> list[dict[str, Any]]:
        return events_for(api_client, broken.name, "ReadinessTaintKept")

    [event] = wait_for(kept, timeout=30, what="the ReadinessTaintKept Event")
    assert (
        f"{READINESS_TAINT_PREFIX}:NoSchedule stays: {name} found the node Failed"
        in (event["message"])
    )
    assert events_for(api_client, name, "ReadinessTaintKept")  # on the policy too
    body = wait_policy(policies, name, lambda b: (b.get("status") or {}).get("failed") == 1,
                       "1 node failed")  # fmt: skip
    [worst] = body["status"]["worstNodes"]
    assert (worst["name"], worst["state"]) == (broken.name, "Failed")
    assert carries_ours(api_client, broken.name)
    assert not (the_pod(api_client, test_namespace, "web") or {}).get("spec", {}).get("nodeName")

    # A node never stays blocked by a policy that no longer exists.
    policies.delete(name)
    wait_for(lambda: not carries_ours(api_client, broken.name), timeout=120,
             what="the deleted policy's taint released")  # fmt: skip
    [released] = events_for(api_client, broken.name, "ReadinessTaintRemoved")
    assert f"{name} was deleted" in released["message"]


def test_a_reboot_with_retaint_on_brings_the_taint_back_until_the_recheck(
    fenced_operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED, taints=[DEDICATED, UNVERIFIED])
    name = f"{test_id}-retaint"
    policies.create(name, enforce_spec(node_factory.selector,
                                       readiness={"retaintOnReboot": True},
                                       job={"tolerations": [TOLERATE_DEDICATED]}))  # fmt: skip
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    wait_for(lambda: not carries_ours(api_client, node.name), timeout=60,
             what="our taint removed")  # fmt: skip

    boot = node.reboot()  # the widened range is back: the recheck has a fix to make
    # Polled every 0.2 s: the recheck takes a Job, a pod and the agent's run, seconds.
    wait_for(lambda: carries_ours(api_client, node.name), timeout=30,
             what="our taint back after the reboot")  # fmt: skip
    assert UNVERIFIED in taints(api_client, node.name)  # NoSchedule, nothing else
    assert DEDICATED in taints(api_client, node.name)
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED, boot_id=boot)
    wait_for(lambda: not carries_ours(api_client, node.name), timeout=60,
             what="our taint removed after the recheck")  # fmt: skip
    assert taints(api_client, node.name) == [DEDICATED]
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    [restored] = events_for(api_client, node.name, "ReadinessTaintRestored")
    assert f"-> {boot})" in restored["message"]
    assert len(events_for(api_client, node.name, "ReadinessTaintRemoved")) == 2
