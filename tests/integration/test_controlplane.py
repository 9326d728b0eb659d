"""The dev control plane itself: real components at the pinned version, simulated nodes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster.binaries import KUBERNETES_VERSION
from devcluster.cluster import DevCluster
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
