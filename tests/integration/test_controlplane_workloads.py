"""Workloads on simulated nodes, through the real controllers: an agent Job runs the real
`nodesysctl.agent` inside the node's network namespace; a Deployment rolls out and restarts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from devcluster.cluster import DevCluster
from devcluster.nodes import SimulatedNode
from devcluster.pytest_plugin import NodeFactory
from devcluster.waiting import wait_for
from nodesysctl.agent.contract import AgentResult, AgentSpec
from nodesysctl.jobs import pin_to_node
from tests.kube_json import as_dict

pytestmark = pytest.mark.integration

PORT_RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
AGENT_LABELS = {"app.kubernetes.io/name": "nodesysctl-agent"}


def agent_job(name: str, node: str, spec_json: str, *, deadline: int = 60) -> dict[str, Any]:
    """A Job like the operator's: privileged, hostNetwork, /etc/sysctl.d mounted, pinned."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": AGENT_LABELS},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": AGENT_LABELS},
                "spec": {
                    "affinity": pin_to_node(node),
                    "hostNetwork": True,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "volumes": [
                        {
                            "name": "host-sysctl-d",
                            "hostPath": {"path": "/etc/sysctl.d", "type": "DirectoryOrCreate"},
                        }
                    ],
                    "containers": [
                        {
                            "name": "agent",
                            "image": "nodesysctl:dev",
                            "command": ["python", "-m", "nodesysctl.agent"],
                            "args": [
                                "--spec-json",
                                spec_json,
                                "--proc-sys",
                                "/proc/sys",
                                "--sysctl-dir",
                                "/host/etc/sysctl.d",
                                "--termination-log",
                                "/dev/termination-log",
                            ],
                            "env": [
                                {
                                    "name": "NODE_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                }
                            ],
                            "securityContext": {"privileged": True},
                            "volumeMounts": [
                                {"name": "host-sysctl-d", "mountPath": "/host/etc/sysctl.d"}
                            ],
                        }
                    ],
                },
            },
        },
    }


def enforce_spec(policy: str) -> str:
    return AgentSpec.model_validate(
        {
            "policy": policy,
            "mode": "Enforce",
            "ephemeralRange": {"min": 32768, "max": 60999},
            "reservedRanges": [{"min": 30000, "max": 32767}],
        }
    ).model_dump_json(by_alias=True)


def run_job(api_client: Any, namespace: str, job: dict[str, Any]) -> tuple[Any, Any]:
    """Create the Job, wait until it is Complete or Failed; return (job, its pod)."""
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    name = job["metadata"]["name"]
    batch.create_namespaced_job(namespace, job)  # type: ignore[arg-type]  # a dict is sent as is

    def finished() -> Any:
        current = batch.read_namespaced_job(name, namespace)
        conditions = {
            c["type"]: c["status"]
            for c in as_dict(current).get("status", {}).get("conditions") or []
        }
        done = conditions.get("Complete") == "True" or conditions.get("Failed") == "True"
        return current if done else None

    finished_job = wait_for(finished, timeout=90, what=f"job {namespace}/{name} to finish")
    [pod] = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    return finished_job, pod


def agent_result(pod: Any) -> AgentResult:
    [status] = pod.status.container_statuses
    return AgentResult.model_validate_json(status.state.terminated.message)


def test_an_agent_job_fixes_the_nodes_netns(
    node_factory: NodeFactory, test_namespace: str, api_client: Any
) -> None:
    node = node_factory(sysctls={PORT_RANGE: "1024 65000", RESERVED: "8080"})
    untouched = node_factory(sysctls={PORT_RANGE: "1024 65000"})

    job, pod = run_job(
        api_client, test_namespace, agent_job("fix", node.name, enforce_spec("safe"))
    )

    assert job.status.succeeded == 1
    assert pod.spec.node_name == node.name
    assert pod.status.phase == "Succeeded"
    [status] = pod.status.container_statuses
    assert status.state.terminated.exit_code == 0
    assert status.state.terminated.reason == "Completed"
    result = agent_result(pod)
    assert result.status == "Remediated"
    assert result.node == node.name  # NODE_NAME came through the downward API
    assert result.before.ip_local_port_range is not None
    assert (result.before.ip_local_port_range.min, result.before.ip_local_port_range.max) == (
        1024,
        65000,
    )
    # The node's own network namespace was really changed, and only that one.
    assert node.get_sysctl(PORT_RANGE) == "32768\t60999"
    assert node.get_sysctl(RESERVED) == "8080,30000-32767"
    assert untouched.get_sysctl(PORT_RANGE) == "1024\t65000"
    # The hostPath /etc/sysctl.d is the node's host root: the persistence file is there.
    assert "zz-nodesysctl-safe.conf" in node.sysctl_conf_files()
    # The container's output (stdout and stderr, as `kubectl logs` would show) has the result.
    log_text = node_factory.cluster.kubelet.pod_log(test_namespace, pod.metadata.name)
    [line] = [x for x in log_text.splitlines() if x.startswith("{")]
    assert AgentResult.model_validate_json(line) == result


def test_an_agent_job_on_a_node_without_netns_uses_its_fake_proc_sys(
    node_factory: NodeFactory, test_namespace: str, api_client: Any
) -> None:
    node = node_factory(netns=False, sysctls={PORT_RANGE: "1024 65000"})
    _, pod = run_job(api_client, test_namespace, agent_job("fix", node.name, enforce_spec("p")))
    assert pod.status.phase == "Succeeded"
    assert agent_result(pod).status == "Remediated"
    assert node.get_sysctl(PORT_RANGE).split() == ["32768", "60999"]


def test_a_failing_agent_fails_the_pod_with_its_result(
    node_factory: NodeFactory, test_namespace: str, api_client: Any
) -> None:
    node = node_factory(netns=False)
    bad_spec = json.dumps({"policy": "p", "mode": "Sometimes"})
    job, pod = run_job(api_client, test_namespace, agent_job("bad", node.name, bad_spec))
    assert job.status.failed == 1
    assert pod.status.phase == "Failed"
    [status] = pod.status.container_statuses
    assert status.state.terminated.exit_code == 2
    assert status.state.terminated.reason == "Error"
    assert agent_result(pod).status == "Failed"


def test_a_hung_agent_is_killed_at_its_deadline(
    node_factory: NodeFactory, test_namespace: str, api_client: Any
) -> None:
    node = node_factory(netns=False)
    job = agent_job("hang", node.name, enforce_spec("p"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["python3", "-c", "import time; time.sleep(300)"]
    container["args"] = []
    job["spec"]["template"]["spec"]["activeDeadlineSeconds"] = 2
    job["spec"]["activeDeadlineSeconds"] = 60
    _, pod = run_job(api_client, test_namespace, job)
    assert pod.status.phase == "Failed"
    assert pod.status.reason == "DeadlineExceeded"


def deployment(name: str, node_selector: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"nodesysctl.io/restart": "true"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [{"name": "web", "image": "registry.invalid/web:1"}],
                },
            },
        },
    }


def rolled_out(apps: Any, namespace: str, name: str) -> bool:
    dep = apps.read_namespaced_deployment(name, namespace)
    want = dep.spec.replicas
    st = dep.status
    return bool(
        st.observed_generation == dep.metadata.generation
        and st.updated_replicas == want
        and st.ready_replicas == want
        and st.available_replicas == want
        and (st.replicas or 0) == want
    )


def test_a_deployment_becomes_ready_and_restarts(
    devcluster: DevCluster,
    node_factory: NodeFactory,
    test_namespace: str,
    api_client: Any,
) -> None:
    nodes: list[SimulatedNode] = [node_factory(netns=False) for _ in range(2)]
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(test_namespace, deployment("web", node_factory.selector))  # type: ignore[arg-type]
    wait_for(lambda: rolled_out(apps, test_namespace, "web"), timeout=60, what="web to roll out")
    pods = as_dict(core.list_namespaced_pod(test_namespace, label_selector="app=web"))["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {n.name for n in nodes}
    for pod in pods:
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        assert pod["status"]["containerStatuses"][0]["ready"]

    # What `kubectl rollout restart` does, and what the operator will do.
    apps.patch_namespaced_deployment(
        "web",
        test_namespace,
        {
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-02T03:04:05Z"}
                    }
                }
            }
        },
    )
    wait_for(lambda: rolled_out(apps, test_namespace, "web"), timeout=60, what="web to roll again")
    replica_sets = as_dict(
        apps.list_namespaced_replica_set(test_namespace, label_selector="app=web")
    )
    assert len(replica_sets["items"]) == 2
    by_restart = {
        (rs["spec"]["template"]["metadata"].get("annotations") or {}).get(
            "kubectl.kubernetes.io/restartedAt"
        ): rs
        for rs in replica_sets["items"]
    }
    assert by_restart["2026-01-02T03:04:05Z"]["status"]["readyReplicas"] == 2
    assert not by_restart[None]["status"].get("replicas")
    # The old pods are gone (deleted by the ReplicaSet controller, removed by the kubelet).
    wait_for(
        lambda: len(core.list_namespaced_pod(test_namespace, label_selector="app=web").items) == 2,
        timeout=30,
        what="the old pods to be gone",
    )
    # The built kubectl agrees, as a real client.
    status = devcluster.kubectl(
        "rollout", "status", "deployment/web", "-n", test_namespace, "--timeout=30s"
    )
    assert "successfully rolled out" in status.stdout
