"""Workloads for the demo and the tests: a Deployment pinned to one simulated node, a DaemonSet
on the nodes a label selects; either in the pod network or the host's (`hostNetwork: true`, the
pods a node's ip_local_port_range reaches)."""

from __future__ import annotations

from typing import Any

from nodesysctl.jobs import pin_to_node

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _pod_spec(host_network: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": PAUSE_IMAGE}]}
    if host_network:
        spec["hostNetwork"] = True
    return spec


def deployment(
    name: str, node: str, labels: dict[str, str] | None = None, *, host_network: bool = False
) -> dict[str, Any]:
    """One replica of a pause container on `node`, selected by `app=<name>`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"affinity": pin_to_node(node), **_pod_spec(host_network)},
            },
        },
    }


def daemon_set(
    name: str,
    node_selector: dict[str, str],
    labels: dict[str, str] | None = None,
    *,
    host_network: bool = True,
) -> dict[str, Any]:
    """A pause container on every node `node_selector` matches, selected by `app=<name>`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": dict(node_selector), **_pod_spec(host_network)},
            },
        },
    }


def pod_disruption_budget(name: str, app: str, min_available: int) -> dict[str, Any]:
    """A PDB over `app=<app>`: for a DaemonSet only an integer minAvailable can ever allow an
    eviction (maxUnavailable and percentages need a scale subresource DaemonSets lack)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    }
