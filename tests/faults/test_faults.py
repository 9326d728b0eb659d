"""The fault matrix: the operator (a real process) against crashes, control-plane restarts and
misbehaving Jobs. Every case ends in `settled(...)`, which checks the same invariants:

* every node ends compliant (its range really is the policy's) or is reported Failed;
* the status is true: observedGeneration = generation, counts match the nodes, Ready says so;
* no duplicate Jobs: at most one Job per (node, spec hash);
* no orphans: no Job left running, every agent pod belongs to an existing Job and is done;
* each Deployment on a remediated node restarted exactly once (two ReplicaSets), others never.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from kubernetes import client, watch

from devcluster.cluster import DevCluster
from devcluster.install import JOB_NAMESPACE
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from nodesysctl.api import parse_spec
from nodesysctl.labels import ANNOTATION_NODE, LABEL_POLICY, LABEL_SPEC_HASH, RESTARTED_AT
from nodesysctl.planning import NodeState, spec_hash
from tests.e2e.conftest import OperatorProcess, Policies
from tests.e2e.test_operator import (
    condition,
    deployment,
    enforce_spec,
    node_result,
    policy_jobs,
    rollouts,
    wait_policy,
)
from tests.kube_json import read_json

from .conftest import FaultyAgent

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.timeout(420)]

RANGE = "net.ipv4.ip_local_port_range"
WIDENED = {RANGE: "1024 65000"}
RESTART_LABELS = {"restart": "yes"}

StartOperator = Callable[..., OperatorProcess]


# --- the invariants --------------------------------------------------------------------------


def _agent_pods(api: Any, policy: str) -> list[dict[str, Any]]:
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod,
        JOB_NAMESPACE,
        label_selector=f"{LABEL_POLICY}={policy}",
    )
    return list(pods["items"])


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def settled(
    api: Any,
    policies: Policies,
    name: str,
    nodes: Iterable[SimulatedNode],
    *,
    failed: Iterable[SimulatedNode] = (),
    either: Iterable[SimulatedNode] = (),
    namespace: str | None = None,
    restarted: Iterable[str] = (),
    untouched: Iterable[str] = (),
    timeout: float = 180,
) -> dict[str, Any]:
    """Wait until the policy settles for this generation, then check every invariant."""
    nodes, failed = list(nodes), list(failed)
    failed_names = {n.name for n in failed}
    either_names = {n.name for n in either}  # compliant or failed: both are a correct ending

    def done(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        return (
            status.get("observedGeneration") == body["metadata"]["generation"]
            and status.get("pending") == 0
            and status.get("nodes") == len(nodes)
            and len(failed) <= status.get("failed", -1) <= len(failed) + len(either_names)
            and condition(body, "Progressing").get("status") == "False"
            and (not restarted or "lastRestart" in status)
        )

    body = wait_policy(policies, name, done, "settled", timeout=timeout)
    status = body["status"]
    current = spec_hash(parse_spec(body["spec"]))

    # Every node compliant (really) or reported failed, under the current spec.
    for node in nodes:
        result = node_result(api, node.name, name)
        assert result is not None, f"{node.name}: no result"
        assert result.spec_hash == current, f"{node.name}: result of an old spec"
        if node.name in failed_names or (
            node.name in either_names and result.status == NodeState.FAILED
        ):
            assert result.status == NodeState.FAILED, f"{node.name}: {result}"
        else:
            assert result.status in (NodeState.COMPLIANT, NodeState.REMEDIATED), result
            assert node.get_sysctl(RANGE).split() == ["32768", "60999"], node.name
    assert status["compliant"] == len(nodes) - status["failed"]
    assert condition(body, "Ready")["status"] == ("False" if status["failed"] else "True")

    # No duplicate Jobs, none left running, no orphaned or running agent pods.
    jobs = policy_jobs(api, name)
    per_check = Counter(
        (j["metadata"]["annotations"][ANNOTATION_NODE], j["metadata"]["labels"][LABEL_SPEC_HASH])
        for j in jobs
    )
    assert max(per_check.values(), default=1) == 1, f"duplicate Jobs: {per_check}"

    def no_orphans() -> bool:
        jobs = policy_jobs(api, name)
        names = {j["metadata"]["name"] for j in jobs}
        pods = _agent_pods(api, name)
        return all(_finished(j) for j in jobs) and all(
            (p["metadata"].get("labels") or {}).get("job-name") in names
            and (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            for p in pods
        )

    wait_for(no_orphans, timeout=90, what=f"{name}: no running Jobs, no orphaned pods")

    # Each affected Deployment restarted exactly once; the others never.
    for deploy in restarted:
        assert namespace is not None
        sets, stamp = rollouts(api, namespace, deploy)
        assert (sets, stamp is not None) == (2, True), f"{deploy}: {sets - 1} restarts"
    for deploy in untouched:
        assert namespace is not None
        assert rollouts(api, namespace, deploy) == (1, None), f"{deploy} was restarted"
    return body


# --- helpers -----------------------------------------------------------------------------------


def fleet(node_factory: Any, count: int, *, drifted: int | None = None) -> list[SimulatedNode]:
    """`count` fake nodes (no netns: fast), the first `drifted` of them widened."""
    drifted = count if drifted is None else drifted
    return [
        node_factory(sysctls=WIDENED if i < drifted else None, netns=False) for i in range(count)
    ]


def with_deployments(api: Any, namespace: str, nodes: list[SimulatedNode]) -> list[str]:
    names = []
    for index, node in enumerate(nodes):
        deployment(api, namespace, f"app{index}", node.name, RESTART_LABELS)
        names.append(f"app{index}")
    return names


def restart_spec(selector: dict[str, str], namespace: str, **extra: Any) -> dict[str, Any]:
    return enforce_spec(
        selector,
        restart={"selector": {"matchLabels": RESTART_LABELS}, "namespaces": [namespace]},
        **extra,
    )


def wait_jobs(api: Any, policy: str, count: int = 1, *, finished: bool = False) -> None:
    def enough() -> bool:
        jobs = policy_jobs(api, policy)
        return len([j for j in jobs if _finished(j) or not finished]) >= count

    wait_for(enough, timeout=90, what=f"{count} {'finished ' if finished else ''}Jobs of {policy}")


def on_first_job_complete(api: Any, policy: str, action: Callable[[], None]) -> threading.Thread:
    """Run `action` the moment the first Job of `policy` is Complete (a watch, not a poll)."""

    def run() -> None:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        for event in stream.stream(  # type: ignore[no-untyped-call]
            client.BatchV1Api(api).list_namespaced_job,
            JOB_NAMESPACE,
            label_selector=f"{LABEL_POLICY}={policy}",
            timeout_seconds=120,
            deserialize=False,
        ):
            if _finished(event["object"]):
                action()
                stream.stop()  # type: ignore[no-untyped-call]
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- operator crashes ---------------------------------------------------------------------------


def test_operator_killed_after_job_creation(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 3)
    apps = with_deployments(api_client, test_namespace, nodes)
    first = start_operator()
    name = f"{test_id}-killjob"
    policies.create(
        name,
        restart_spec(node_factory.selector, test_namespace, rollout={"maxConcurrent": 1}),
    )
    wait_jobs(api_client, name)
    first.kill()
    start_operator()
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)


def test_operator_killed_after_the_fix_before_recording_it(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 3)
    apps = with_deployments(api_client, test_namespace, nodes)
    first = start_operator()
    name = f"{test_id}-killfix"
    killer = on_first_job_complete(api_client, name, first.kill)
    policies.create(
        name,
        restart_spec(node_factory.selector, test_namespace, rollout={"maxConcurrent": 1}),
    )
    killer.join(timeout=120)
    assert first.process is not None
    assert first.process.poll() is not None, "never killed"
    start_operator()
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)


def test_operator_killed_between_workload_restarts(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 3)
    apps = with_deployments(api_client, test_namespace, nodes)
    # One restart now, the next only 10 s later: the kill lands inside the wave.
    slow = ("--restart-burst", "1", "--restarts-per-minute", "6")
    first = start_operator(*slow)
    name = f"{test_id}-killwave"
    policies.create(name, restart_spec(node_factory.selector, test_namespace))
    apps_api: Any = client.AppsV1Api(api_client)

    def one_restarted() -> int:
        stamped = 0
        for app in apps:
            dep = read_json(apps_api.read_namespaced_deployment, app, test_namespace)
            annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
            stamped += RESTARTED_AT in annotations
        return stamped

    stamped = wait_for(one_restarted, timeout=120, what="the first workload restart")
    first.kill()
    assert stamped < len(apps), "the whole wave ran before the kill; nothing was tested"
    start_operator(*slow)
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)


# --- the control plane goes away ------------------------------------------------------------------


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_component_restarted_mid_rollout(
    component: str,
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    devcluster: DevCluster,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 4)
    apps = with_deployments(api_client, test_namespace, nodes[2:])
    start_operator()
    name = f"{test_id}-{component[:4]}"
    policies.create(
        name,
        restart_spec(
            node_factory.selector,
            test_namespace,
            rollout={"maxConcurrent": 1, "maxFailedNodes": 4},
            job={"activeDeadlineSeconds": 30},
        ),
    )
    wait_jobs(api_client, name, 2)
    devcluster.control_plane.restart(component)
    # The check running across the outage is reported once the API server is back (the kubelet
    # retries its status update), so every node ends compliant: nothing is lost to an outage.
    settled(
        api_client,
        policies,
        name,
        nodes,
        namespace=test_namespace,
        restarted=apps,
        timeout=240,
    )


# --- Jobs that misbehave ------------------------------------------------------------------------


def test_failing_hanging_garbage_and_deleted_agent_pods(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    faulty_agent: FaultyAgent,
    test_id: str,
) -> None:
    """One node each: the agent fails (a garbage sysctl value), hangs past the Job's deadline,
    writes a garbage termination message, has its pod deleted mid-run; and two good nodes."""
    broken = node_factory(netns=False, name=f"{test_id}-broken")
    (broken.proc_sys / "net/ipv4/ip_local_port_range").write_text("garbage\n")
    hangs = node_factory(sysctls=WIDENED, netns=False, name=f"{test_id}-hangs")
    garbage = node_factory(sysctls=WIDENED, netns=False, name=f"{test_id}-garbage")
    deleted = node_factory(sysctls=WIDENED, netns=False, name=f"{test_id}-deleted")
    good = fleet(node_factory, 2)
    faulty_agent.hang.append(hangs.name)
    faulty_agent.garbage.append(garbage.name)
    faulty_agent.hang_once.append(deleted.name)
    start_operator("--agent-python", faulty_agent.write())
    name = f"{test_id}-pods"
    spec = enforce_spec(
        node_factory.selector,
        rollout={"maxConcurrent": 6, "maxFailedNodes": 6},
        job={"activeDeadlineSeconds": 10, "backoffLimit": 0},
    )
    policies.create(name, spec)

    core: Any = client.CoreV1Api(api_client)

    def running_pod_of_deleted() -> dict[str, Any] | None:
        for pod in _agent_pods(api_client, name):
            if (
                pod["spec"].get("nodeName") == deleted.name
                and (pod.get("status") or {}).get("phase") == "Running"
            ):
                return pod
        return None

    pod = wait_for(running_pod_of_deleted, timeout=60, what="the agent pod on the deleted node")
    core.delete_namespaced_pod(pod["metadata"]["name"], JOB_NAMESPACE)

    body = settled(
        api_client,
        policies,
        name,
        [broken, hangs, garbage, deleted, *good],
        failed=[broken, hangs, garbage],
        either=[deleted],  # the Job may retry the deleted pod or count it as failed
    )
    messages = {w["name"]: w["message"] for w in body["status"]["worstNodes"]}
    assert "garbage" in messages[broken.name]
    assert "DeadlineExceeded" in messages[hangs.name]
    assert "unreadable agent result" in messages[garbage.name]
    print(json.dumps(messages, indent=2))


def test_node_deleted_mid_check(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    faulty_agent: FaultyAgent,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 3)
    leaving = node_factory(sysctls=WIDENED, netns=False, name=f"{test_id}-leaving")
    faulty_agent.hang.append(leaving.name)
    start_operator("--agent-python", faulty_agent.write())
    name = f"{test_id}-gone"
    policies.create(name, enforce_spec(node_factory.selector, rollout={"maxConcurrent": 4}))

    def leaving_job() -> bool:
        return any(
            j["metadata"]["annotations"][ANNOTATION_NODE] == leaving.name
            for j in policy_jobs(api_client, name)
        )

    wait_for(leaving_job, timeout=60, what="the check of the leaving node")
    node_factory.remove(leaving)
    settled(api_client, policies, name, nodes)
    gone = [
        j
        for j in policy_jobs(api_client, name)
        if j["metadata"]["annotations"][ANNOTATION_NODE] == leaving.name
    ]
    assert gone == [], "the Job of the deleted node was left behind"


# --- policy edits --------------------------------------------------------------------------------


def test_policy_edited_mid_rollout_supersedes_the_old_generation(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 4)
    apps = with_deployments(api_client, test_namespace, nodes[:2])
    start_operator()
    name = f"{test_id}-edit"
    policies.create(
        name,
        restart_spec(node_factory.selector, test_namespace, rollout={"maxConcurrent": 1}),
    )
    wait_jobs(api_client, name, 2)
    policies.patch_spec(name, {"ports": {"protectedPorts": [10250, 10256]}})
    body = settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)
    assert body["metadata"]["generation"] == 2
    for node in nodes:
        assert "10256" in node.get_sysctl("net.ipv4.ip_local_reserved_ports")


def test_a_burst_of_100_policy_updates(
    start_operator: StartOperator,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 4)
    start_operator()
    name = f"{test_id}-burst"
    policies.create(name, enforce_spec(node_factory.selector, rollout={"maxConcurrent": 2}))
    for port in range(20000, 20100):  # every update changes what a node check does
        policies.patch_spec(name, {"ports": {"protectedPorts": [port]}})
    body = settled(api_client, policies, name, nodes, timeout=240)
    assert body["metadata"]["generation"] == 101
    for node in nodes:
        reserved = node.get_sysctl("net.ipv4.ip_local_reserved_ports")
        assert "20099" in reserved
    jobs = policy_jobs(api_client, name)
    # Superseded checks were deleted, not left to pile up: far fewer Jobs than updates.
    assert len(jobs) <= 3 * len(nodes), f"{len(jobs)} Jobs for 100 updates of 4 nodes"
