"""The operator and its agent on real nodes: the built image, the shipped Deployment under Pod
Security `restricted`, agent Jobs in real containers (privileged, hostNetwork, read-only root,
the hostPath of the node's own /etc/sysctl.d, the termination message), `kubectl logs`, a
hostNetwork workload restarted for real, and a real reboot (systemd-sysctl, a new boot id)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster import images
from devcluster.cluster import DevCluster
from devcluster.images import PAUSE_ALIASES
from devcluster.install import JOB_NAMESPACE, OPERATOR_NAMESPACE
from devcluster.realnode import KUBELET_TUNABLES, RealNode, pids_in_namespace
from devcluster.waiting import wait_for
from devcluster.workloads import deployment as deployment_body
from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE
from nodesysctl.labels import LABEL_RESTART_OPT_IN
from nodesysctl.planning import NodeState
from tests.kube_json import read_json

from ..e2e.conftest import Policies
from ..e2e.test_operator import (
    KERNEL_DEFAULT_RANGE,
    RANGE,
    RESERVED,
    WIDENED,
    enforce_spec,
    node_result,
    ready,
    wait_node_state,
    wait_policy,
)
from ..unit.test_image import lock_pins
from .conftest import agent_pods, operator_log

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(600)]

NODEPORTS = "30000-32767"
PAUSE = PAUSE_ALIASES[0]
LIST_DISTRIBUTIONS = """
import importlib.metadata, json, os, sys
print(json.dumps({
    "executable": sys.executable,
    "interpreter": os.path.realpath(sys.executable),
    "distributions": sorted(
        (d.metadata["Name"].lower().replace("_", "-"), d.version)
        for d in importlib.metadata.distributions()
    ),
}))
"""
ALREADY_RESERVED = {RESERVED: f"10250,{NODEPORTS}"}


MACHINE_KEYS = (*KUBELET_TUNABLES, RANGE, RESERVED)


def machine_sysctls() -> dict[str, str]:
    """This machine's own values (this process runs in the machine's namespaces)."""
    return {key: Path("/proc/sys", key.replace(".", "/")).read_text() for key in MACHINE_KEYS}


@pytest.fixture(scope="module")
def machine_before() -> dict[str, str]:
    """The machine's kernel settings before any real node of this module started."""
    return machine_sysctls()


@pytest.fixture(scope="module")
def nodes(machine_before: dict[str, str], real_node_factory: Any) -> dict[str, RealNode]:
    """Three real nodes: one widened (the seed's incident), one with the ports already
    reserved, one at the kernel defaults."""
    widened, reserved, default = real_node_factory.many(WIDENED, ALREADY_RESERVED, None)
    return {"widened": widened, "reserved": reserved, "default": default}


@pytest.fixture(scope="module")
def policies(installed: dict[str, Any], real_nodes_available: DevCluster) -> Iterator[Policies]:
    made = Policies(real_nodes_available.api)
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def workload_namespace(real_nodes_available: DevCluster) -> Iterator[str]:
    name = real_nodes_available.create_namespace("realnode-workloads")
    yield name
    real_nodes_available.delete_namespace(name)


def kubectl_exec(cluster: DevCluster, pod: str, *command: str) -> Any:
    return cluster.kubectl("exec", "-n", OPERATOR_NAMESPACE, pod, "--", *command, check=False)


# --- 1. the image and the shipped Deployment ---------------------------------------------------


def test_the_shipped_deployment_runs_the_built_image_on_a_real_node(
    machine_before: dict[str, str],
    nodes: dict[str, RealNode],
    installed: dict[str, Any],
    real_nodes_available: DevCluster,
) -> None:
    cluster = real_nodes_available
    # Three kubelets started and none changed the machine's kernel (their tuning went to
    # files in each node's mount namespace).
    assert machine_sysctls() == machine_before
    pod = read_json(
        client.CoreV1Api(cluster.api).read_namespaced_pod,
        installed["metadata"]["name"],
        OPERATOR_NAMESPACE,
    )
    name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] in cluster.real_nodes
    (status,) = pod["status"]["containerStatuses"]
    assert status["ready"] is True
    assert status["restartCount"] == 0
    assert status["image"].endswith(cluster.images.nodesysctl.ref.rpartition("/")[2])
    # Pod Security "restricted" admitted it, and the container really is what the spec says:
    namespace = read_json(client.CoreV1Api(cluster.api).read_namespace, OPERATOR_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert kubectl_exec(cluster, name, "id", "-u").stdout.strip() == "65532"
    touched = kubectl_exec(cluster, name, "touch", "/probe")
    assert touched.returncode != 0
    assert "Read-only file system" in touched.stderr
    assert kubectl_exec(cluster, name, "touch", "/tmp/probe").returncode == 0
    # The image holds exactly the lock plus the project, in the Dockerfile's venv; only the
    # interpreter behind it differs (Debian's python3 here, python:3.11-slim's there).
    listed = kubectl_exec(cluster, name, "python", "-c", LIST_DISTRIBUTIONS)
    installed = json.loads(listed.stdout)
    assert installed["executable"] == f"{images.VENV}/bin/python"
    assert installed["interpreter"] == "/usr/bin/python3.11"
    expected = {**lock_pins(), "nodesysctl": "0.1.0"}
    assert dict(installed["distributions"]) == expected
    # Its probes pass (Ready above; no failed probe reported), and `kubectl logs` shows it.
    events = read_json(
        client.CoreV1Api(cluster.api).list_namespaced_event,
        OPERATOR_NAMESPACE,
        field_selector=f"involvedObject.name={name},reason=Unhealthy",
    )
    assert events["items"] == []
    log = operator_log(cluster)
    assert "nodesysctl" in log.lower() or "kopf" in log.lower(), log[-2000:]


# --- 2. the seed scenario on real nodes ------------------------------------------------------


def test_the_seed_scenario_on_real_nodes(
    machine_before: dict[str, str],
    nodes: dict[str, RealNode],
    policies: Policies,
    workload_namespace: str,
    real_nodes_available: DevCluster,
    real_node_factory: Any,
) -> None:
    cluster = real_nodes_available
    api = cluster.api
    widened = nodes["widened"]
    assert widened.get_sysctl(RANGE) == "1024\t65000"
    # A hostNetwork workload on the drifted node, opted in to restarts.
    body = deployment_body("hostnet", widened.name, {LABEL_RESTART_OPT_IN: "true"})
    body["spec"]["template"]["spec"]["hostNetwork"] = True
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_deployment(workload_namespace, body)
    before = wait_running_pod(api, workload_namespace, "hostnet")

    name = "realnode-seed"
    policies.create(
        name,
        enforce_spec(real_node_factory.selector, restart={"namespaces": [workload_namespace]}),
    )
    status = wait_policy(
        policies,
        name,
        lambda b: ready(b) and "lastRestart" in b["status"],
        "Ready with a completed restart wave",
        timeout=300,
    )["status"]
    assert (status["nodes"], status["compliant"], status["failed"]) == (3, 3, 0)

    # The nodes' own kernels changed, the machine's did not.
    for node in nodes.values():
        assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
        assert NODEPORTS in node.get_sysctl(RESERVED)
        assert "10250" in node.get_sysctl(RESERVED)
        persisted = node.sysctl_conf_files()[COMPOSED_PERSIST_FILE]
        assert f"{RANGE} = 32768 60999" in persisted
    result = node_result(api, widened.name, name)
    assert result is not None
    assert result.status == NodeState.REMEDIATED
    # ... and the machine's own kernel and /etc/sysctl.d were left alone.
    assert machine_sysctls() == machine_before
    assert not list(Path("/etc/sysctl.d").glob("zz-nodesysctl*"))

    # Each agent ran in a real container: its result is the pod's termination message, and
    # `kubectl logs` shows the same JSON line.
    pods = [p for p in agent_pods(api, name) if p["status"].get("phase") == "Succeeded"]
    assert {p["spec"]["nodeName"] for p in pods} == {n.name for n in nodes.values()}
    for pod in pods:
        (container,) = pod["status"]["containerStatuses"]
        message = json.loads(container["state"]["terminated"]["message"])
        assert message["policy"] == name
        assert message["node"] == pod["spec"]["nodeName"]
        logs = cluster.kubectl("logs", "-n", JOB_NAMESPACE, pod["metadata"]["name"]).stdout
        # stdout holds the JSON line; the agent's human-readable log goes to stderr.
        (line,) = (json.loads(text) for text in logs.splitlines() if text.startswith("{"))
        assert line["status"] == message["status"]
        assert line["after"] == message["after"]

    # The hostNetwork workload on the remediated node was restarted: a new pod, running.
    assert status["lastRestart"]["workloads"] == [f"Deployment/{workload_namespace}/hostnet"]
    after = wait_running_pod(api, workload_namespace, "hostnet", not_uid=before)
    assert after != before


def wait_running_pod(api: Any, namespace: str, app: str, not_uid: str | None = None) -> str:
    """The uid of the one Running, Ready pod of `app` (other than `not_uid`)."""

    def running() -> str | None:
        pods = read_json(
            client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=f"app={app}"
        )["items"]
        live = [
            p for p in pods
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["uid"] != not_uid
            and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])
        ]  # fmt: skip
        return str(live[0]["metadata"]["uid"]) if len(live) == 1 else None

    return wait_for(running, timeout=120, what=f"a running pod of {namespace}/{app}")


# --- 3. a real reboot ------------------------------------------------------------------------


def test_a_reboot_is_detected_rechecked_and_the_fix_survives(
    nodes: dict[str, RealNode], policies: Policies, real_nodes_available: DevCluster
) -> None:
    api = real_nodes_available.api
    node = nodes["widened"]
    name = "realnode-seed"
    wait_node_state(api, node.name, name, NodeState.REMEDIATED)
    # The distribution's own file widens the range at boot; the persisted file comes later by
    # name, so systemd-sysctl applies it last.
    (node.sysctl_d / "10-widen.conf").write_text(f"{RANGE} = 1024 65000\n")
    boot_id = node.reboot()
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    assert NODEPORTS in node.get_sysctl(RESERVED)

    def reported() -> bool:
        body = read_json(client.CoreV1Api(api).read_node, node.name)
        return bool(body["status"]["nodeInfo"]["bootID"] == boot_id)

    wait_for(reported, timeout=120, what=f"node {node.name} reporting boot id {boot_id}")
    result = wait_node_state(api, node.name, name, NodeState.COMPLIANT, boot_id=boot_id,
                             timeout=180)  # fmt: skip
    assert result.boot_id == boot_id
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE


# --- 4. stopping a node ----------------------------------------------------------------------


def test_a_stopped_node_leaves_no_process_mount_cgroup_or_netns(
    real_node_factory: Any, workload_namespace: str, real_nodes_available: DevCluster
) -> None:
    api = real_nodes_available.api
    node: RealNode = real_node_factory()
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "on-a-doomed-node", "labels": {"app": "doomed"}},
        "spec": {"nodeName": node.name, "containers": [{"name": "app", "image": PAUSE}]},
    }
    core: Any = client.CoreV1Api(api)
    core.create_namespaced_pod(workload_namespace, pod)
    wait_running_pod(api, workload_namespace, "doomed")
    containers = [p.name for p in (node.dir / "runc" / "k8s.io").iterdir()]
    # At least the sandbox and the app (the policy's agent may have run there too).
    assert len(containers) >= 2
    pidns = (node.dir / "pidns").read_text().strip()
    assert pids_in_namespace(pidns)

    real_node_factory.remove(node)

    assert pids_in_namespace(pidns) == []
    assert not [c for c in Path("/sys/fs/cgroup").glob("*/k8s.io/*") if c.name in containers]
    assert str(node.dir) not in Path("/proc/self/mountinfo").read_text()
    assert (
        node.netns
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not Path("/sys/class/net", node.veth).exists()
    assert not node.dir.exists()
