"""Workloads for the demo and the tests: a Deployment pinned to one simulated node."""

from __future__ import annotations

from typing import Any

from nodesysctl.jobs import pin_to_node


def deployment(name: str, node: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
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
                "spec": {
                    "affinity": pin_to_node(node),
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }
