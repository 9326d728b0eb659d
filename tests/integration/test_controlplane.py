"""The dev control plane itself: real components at the pinned version, simulated nodes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster.binaries import KUBERNETES_VERSION
from devcluster.cluster import DevCluster
from devcluster.controlplane import ControlPlane
from devcluster.kubelet.readiness import NOT_READY_TAINT, UNREACHABLE_TAINT
from devcluster.nodes import SimulatedNode
from devcluster.pytest_plugin import NodeFactory
from devcluster.waiting import wait_for
from tests.kube_json import as_dict

REPO = Path(__file__).resolve().parents[2]
PORT_RANGE = "net.ipv4.ip_local_port_range"


def test_python_side_knows_the_version_the_build_pins() -> None:
    go_mod = (REPO / "hack" / "controlplane" / "k8s" / "go.mod").read_text()
    [pinned] = re.findall(r"^require k8s\.io/kubernetes (v\S+)$", go_mod, re.MULTILINE)
    assert pinned == KUBERNETES_VERSION


@pytest.mark.integration
def test_components_are_real_and_at_the_pinned_version(devcluster: DevCluster) -> None:
    versions = json.loads(devcluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert versions["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    # RBAC and the controllers are on: the controller-manager made its per-controller
    # service accounts (--use-service-account-credentials).
    accounts = devcluster.kubectl("get", "serviceaccounts", "-n", "kube-system", "-o", "name")
    for controller in ("job-controller", "deployment-controller", "node-controller"):
        assert f"serviceaccount/{controller}" in accounts.stdout.split()
    can_i = devcluster.kubectl(
        "auth", "can-i", "create", "pods", "--as=system:serviceaccount:default:default",
        check=False,
    )  # fmt: skip
    assert can_i.stdout.strip() == "no"


@pytest.mark.integration
def test_a_simulated_node_is_ready_with_its_own_sysctls(
    node_factory: NodeFactory, api_client: Any, kubectl: Any
) -> None:
    node = node_factory({"pool": "a"}, sysctls={PORT_RANGE: "1024 65000"})
    plain = node_factory({"pool": "b"})

    # Each node is its own network namespace: its own value, the host's untouched.
    assert node.netns
    assert node.netns != plain.netns
    assert node.get_sysctl(PORT_RANGE) == "1024\t65000"
    assert plain.get_sysctl(PORT_RANGE) == "32768\t60999"

    core = client.CoreV1Api(api_client)
    obj = node_body(core, node.name)
    assert obj["metadata"]["labels"]["pool"] == "a"
    assert obj["status"]["nodeInfo"]["bootID"] == node.boot_id
    assert obj["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
    assert obj["status"]["allocatable"]["pods"] == "110"
    assert lease_body(api_client, node.name)["spec"]["holderIdentity"] == node.name

    listing = kubectl("get", "nodes", "-l", "pool=a", "--no-headers").stdout
    assert re.match(rf"^{node.name}\s+Ready\s", listing)

    # "Reboot": a new boot ID on the Node, sysctls back to what the node boots with.
    node.set_sysctl(PORT_RANGE, "2000 3000")
    old_boot = node.boot_id
    new_boot = node.reboot()
    assert new_boot != old_boot
    assert node.get_sysctl(PORT_RANGE) == "1024\t65000"
    assert node_body(core, node.name)["status"]["nodeInfo"]["bootID"] == new_boot

    node.set_labels({"pool": "c", "extra": "yes"})
    node.remove_labels("extra")
    labels = node_body(core, node.name)["metadata"]["labels"]
    assert labels["pool"] == "c"
    assert "extra" not in labels


@pytest.mark.integration
def test_leases_are_renewed(node_factory: NodeFactory, api_client: Any) -> None:
    node = node_factory(netns=False)

    def renewed_at() -> datetime:
        return datetime.fromisoformat(lease_body(api_client, node.name)["spec"]["renewTime"])

    first = renewed_at()
    wait_for(
        lambda: renewed_at() > first,
        timeout=30,
        what=f"the lease of {node.name} to be renewed",
    )


def ready_condition(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    conditions = node_body(core, name)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Ready")


def health_taints(core: client.CoreV1Api, name: str) -> set[tuple[str, str]]:
    taints = node_body(core, name)["spec"].get("taints") or []
    return {
        (t["key"], t["effect"]) for t in taints if t["key"] in (NOT_READY_TAINT, UNREACHABLE_TAINT)
    }


def mark_unknown(core: client.CoreV1Api, name: str) -> None:
    """What the node lifecycle controller writes once a node's heartbeats are older than the
    grace period: every kubelet condition Unknown, the heartbeat time left as it was."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {
            "type": kind,
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastTransitionTime": stamp,
        }
        for kind in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    core.patch_node_status(
        name,
        {"status": {"conditions": conditions}},
        _content_type="application/strategic-merge-patch+json",
    )


def back_to_ready(core: client.CoreV1Api, node: SimulatedNode) -> bool:
    ready = ready_condition(core, node.name)
    ok = (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    return ok and not health_taints(core, node.name)


@pytest.mark.integration
def test_the_kubelet_answers_the_controllers_unknown_mark_at_once(
    node_factory: NodeFactory, api_client: Any
) -> None:
    node = node_factory(netns=False)
    core = client.CoreV1Api(api_client)
    renewed = datetime.fromisoformat(lease_body(api_client, node.name)["spec"]["renewTime"])
    mark_unknown(core, node.name)
    # As a real kubelet that finds its status changed: its conditions again, at once.
    wait_for(lambda: back_to_ready(core, node), timeout=30, what=f"{node.name} Ready again")
    conditions = {
        c["type"]: c["status"] for c in node_body(core, node.name)["status"]["conditions"]
    }
    assert conditions == {
        "Ready": "True", "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False"
    }  # fmt: skip
    lease = lease_body(api_client, node.name)["spec"]["renewTime"]
    assert datetime.fromisoformat(lease) > renewed  # and a heartbeat with them


@pytest.mark.integration
def test_a_node_marked_unknown_while_its_kubelet_hangs_is_ready_once_it_is_back(
    node_factory: NodeFactory, api_client: Any
) -> None:
    node = node_factory(netns=False)
    # A second, Ready node: in a zone where every node is NotReady the controller assumes a
    # network partition ("full disruption") and puts no taint on anyone.
    node_factory(netns=False)
    core = client.CoreV1Api(api_client)
    node.pause_heartbeats()
    mark_unknown(core, node.name)  # what the controller does after the 60 s grace period
    unreachable = {(UNREACHABLE_TAINT, "NoSchedule"), (UNREACHABLE_TAINT, "NoExecute")}
    wait_for(
        lambda: health_taints(core, node.name) == unreachable,
        timeout=60,
        what=f"the controller to taint {node.name} unreachable",
    )
    assert ready_condition(core, node.name)["status"] == "Unknown"  # a hung kubelet is silent
    node.resume_heartbeats()
    # The kubelet posts Ready; the controller takes its own taints off.
    wait_for(lambda: back_to_ready(core, node), timeout=60, what=f"{node.name} Ready again")


@pytest.mark.integration
def test_a_kubelet_reported_not_ready_stays_so_through_the_controllers_unknown_mark(
    node_factory: NodeFactory, api_client: Any
) -> None:
    node = node_factory(netns=False)
    node_factory(netns=False)  # not a fully disrupted zone (see above)
    core = client.CoreV1Api(api_client)
    node.set_ready(False)  # its container runtime is down; the Lease goes on
    node.pause_heartbeats()
    mark_unknown(core, node.name)
    node.resume_heartbeats()
    # The repost says what this kubelet says: NotReady, not Ready.
    wait_for(
        lambda: ready_condition(core, node.name)["reason"] == "KubeletNotReady",
        timeout=30,
        what=f"{node.name} reported NotReady again",
    )
    assert ready_condition(core, node.name)["status"] == "False"
    node.set_ready(True)
    wait_for(lambda: back_to_ready(core, node), timeout=60, what=f"{node.name} Ready again")


@pytest.mark.integration
def test_the_controller_marks_a_hung_kubelets_node_unknown_and_it_recovers(
    devcluster: DevCluster,
) -> None:
    """The whole path with the real controller, on a cluster of its own with a 10 s grace
    period (the session's is 60 s): heartbeats stop, the controller marks the node Unknown and
    taints it, the heartbeats come back, the node is Ready and untainted."""
    del devcluster  # only for its checks: binaries and root are there
    with DevCluster(ControlPlane(node_monitor_grace_seconds=10.0)) as cluster:
        hung = cluster.add_node("hung", netns=False)
        other = cluster.add_node("other", netns=False)
        core = client.CoreV1Api(cluster.api)
        hung.pause_heartbeats()
        wait_for(
            lambda: ready_condition(core, "hung")["reason"] == "NodeStatusUnknown",
            timeout=60,
            what="the controller to mark the hung node Unknown",
        )
        wait_for(lambda: health_taints(core, "hung"), timeout=60, what="its unreachable taint")
        hung.resume_heartbeats()
        wait_for(lambda: back_to_ready(core, hung), timeout=60, what="the node Ready again")
        # The other node's heartbeats went on the whole time: it never left Ready.
        assert [c.node for c in cluster.kubelet.readiness.changes_since(0)] == ["hung"]
        assert back_to_ready(core, other)
        assert cluster.kubelet_errors == []


@pytest.mark.integration
def test_deleting_a_node_removes_its_namespace(node_factory: NodeFactory, api_client: Any) -> None:
    node = node_factory()
    netns = node.netns
    assert netns is not None
    assert Path("/run/netns", netns).exists()
    node_factory.remove(node)
    assert not Path("/run/netns", netns).exists()
    core = client.CoreV1Api(api_client)
    wait_for(
        lambda: (
            node.name not in [n["metadata"]["name"] for n in as_dict(core.list_node())["items"]]
        ),
        timeout=30,
        what=f"node {node.name} to be gone",
    )


@pytest.mark.integration
def test_a_hundred_nodes_without_netns(node_factory: NodeFactory, api_client: Any) -> None:
    nodes = node_factory.many(100, sysctls={PORT_RANGE: "1024 65000"})
    assert all(n.netns is None for n in nodes)
    assert nodes[0].get_sysctl(PORT_RANGE) == "1024\t65000"
    selector = ",".join(f"{k}={v}" for k, v in node_factory.selector.items())
    listed = client.CoreV1Api(api_client).list_node(label_selector=selector).items
    assert len(listed) == 100


def node_body(core: client.CoreV1Api, name: str) -> dict[str, Any]:
    return as_dict(core.read_node(name))


def lease_body(api_client: Any, name: str) -> dict[str, Any]:
    return as_dict(
        client.CoordinationV1Api(api_client).read_namespaced_lease(name, "kube-node-lease")
    )
