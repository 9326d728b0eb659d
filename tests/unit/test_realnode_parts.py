"""The pure parts of the dev cluster's real nodes, without starting one: addresses, the cleanup
of container cgroups, the node script, and the registry-less overlay the real-node lane
applies (it may change only what a cluster without a registry needs)."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import realnode
from devcluster.install import REPO, UPSTREAM_IMAGE, registryless_overlay

from .test_manifests import find_kubectl


def test_each_slot_is_a_slash_30_of_its_own_and_a_pod_slash_24() -> None:
    seen: set[str] = set()
    for slot in (0, 1, 2, 63, 64, realnode.MAX_SLOTS - 1):
        host, node, pods = realnode._slot_addresses(slot)
        net = ipaddress.ip_network(f"{host}/30", strict=False)
        assert ipaddress.ip_address(node) in net
        assert net.subnet_of(realnode.NODE_SUBNETS)  # type: ignore[arg-type]
        assert ipaddress.ip_network(pods).subnet_of(realnode.POD_SUBNETS)  # type: ignore[arg-type]
        assert not {host, node, pods} & seen
        seen |= {host, node, pods}


def test_the_relay_is_the_kubernetes_service_address() -> None:
    # Pods find the API server where the kubelet's KUBERNETES_SERVICE_HOST points; the serving
    # certificate has that address (devcluster.certs: IP:10.0.0.1).
    from devcluster.controlplane import SERVICE_CLUSTER_IP_RANGE

    first = next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts())
    assert str(first) == realnode.RELAY_ADDRESS


def test_the_kubelets_kernel_tunables_are_all_shadowed() -> None:
    # pkg/kubelet/cm's setupKernelTunables: these six, with the values it wants.
    assert realnode.KUBELET_TUNABLES == {
        "vm.overcommit_memory": "1",
        "vm.panic_on_oom": "0",
        "kernel.panic": "10",
        "kernel.panic_on_oops": "1",
        "kernel.keys.root_maxkeys": "1000000",
        "kernel.keys.root_maxbytes": "25000000",
    }


def test_only_the_nodes_own_container_cgroups_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroups = tmp_path / "cgroup"
    for controller in ("memory", "cpu"):
        for container in ("mine", "someone-elses"):
            (cgroups / controller / "k8s.io" / container).mkdir(parents=True)
    runc = tmp_path / "runc"
    (runc / "k8s.io" / "mine").mkdir(parents=True)
    monkeypatch.setattr(realnode, "CGROUP_ROOT", cgroups)
    removed = realnode.remove_container_cgroups(runc)
    assert sorted(p.relative_to(cgroups).as_posix() for p in removed) == [
        "cpu/k8s.io/mine",
        "memory/k8s.io/mine",
    ]
    assert (cgroups / "memory" / "k8s.io" / "someone-elses").is_dir()
    assert realnode.remove_container_cgroups(tmp_path / "never-started") == []


def test_the_node_script_parses() -> None:
    subprocess.run(["bash", "-n", str(realnode.INIT_SCRIPT)], check=True)


def render(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


AGENT_IMAGE_ANNOTATION = "nodesysctl.io/agent-image"


def test_the_registryless_overlay_changes_only_image_pull_env_and_placement(
    tmp_path: Path,
) -> None:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not built (make controlplane)")
    ref = "localhost/nodesysctl/nodesysctl:0123456789abcdef"
    stock = render(kubectl, REPO / "manifests" / "overlays" / "default")
    ours = render(kubectl, registryless_overlay(tmp_path / "overlay", ref))

    def key(doc: dict[str, Any]) -> tuple[str, str, str]:
        meta = doc["metadata"]
        return doc["kind"], meta.get("namespace", ""), meta["name"]

    assert [key(d) for d in stock] == [key(d) for d in ours]
    for before, after in zip(stock, ours, strict=True):
        if before["kind"] == "ServiceAccount":
            # The fence admits only the image its ServiceAccount names: kustomize's `images:`
            # edit rewrites that annotation with the container image (fence-names.yaml).

            def without_image(doc: dict[str, Any]) -> dict[str, Any]:
                meta = dict(doc["metadata"])
                meta["annotations"] = dict(meta.get("annotations") or {})
                meta["annotations"].pop(AGENT_IMAGE_ANNOTATION, None)
                return {**doc, "metadata": meta}

            assert after["metadata"]["annotations"][AGENT_IMAGE_ANNOTATION] == ref
            assert without_image(before) == without_image(after)
            continue
        if before["kind"] != "Deployment":
            assert before == after
            continue
        spec_before = before["spec"]["template"]["spec"]
        spec_after = after["spec"]["template"]["spec"]
        (container_before,) = spec_before["containers"]
        (container,) = spec_after["containers"]
        assert container_before["image"].startswith(UPSTREAM_IMAGE + ":")
        assert container["image"] == ref
        assert container["imagePullPolicy"] == "Never"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NODESYSCTL_AGENT_IMAGE"] == ref
        assert env["KUBERNETES_SERVICE_HOST"] == realnode.RELAY_ADDRESS
        assert spec_after["nodeSelector"] == {realnode.REAL_NODE_LABEL: "true"}
        # Everything else of the pod spec (securityContext, probes, volumes, args) as shipped.
        rest = {"image", "imagePullPolicy", "env"}
        assert {k: v for k, v in container.items() if k not in rest} == {
            k: v for k, v in container_before.items() if k not in rest
        }
        assert {k: v for k, v in spec_after.items() if k not in ("containers", "nodeSelector")} == {
            k: v for k, v in spec_before.items() if k != "containers"
        }
