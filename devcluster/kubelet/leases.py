"""Node keeping: the Node objects of the simulated nodes and their Leases.

Each node's Node object is registered once (capacity, allocatable, conditions,
``nodeInfo.bootID``, ``kubeletVersion``) with its Lease in ``kube-node-lease``; from then on
only the Lease is renewed (:mod:`.heartbeats`, in a process of its own): the node lifecycle
controller counts a renewed Lease as a heartbeat, so thousands of nodes cost one small write
each per renew period, never a status write. The conditions are posted again only when the
controller marked the node Unknown, as a kubelet does when its status was changed behind it.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..binaries import KUBERNETES_VERSION
from ..nodes import NODE_IP, SimulatedNode
from .api_formats import MERGE, STRATEGIC, micro_now, now

Json = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"


def _condition(kind: str, status: str, reason: str, message: str, stamp: str) -> Json:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def ready_condition(stamp: str, ready: bool) -> Json:
    """The Ready condition as the kubelet reports it: True (KubeletReady), or False
    (KubeletNotReady, as when its container runtime is down)."""
    if ready:
        return _condition("Ready", "True", "KubeletReady", "simulated kubelet is ready", stamp)
    return _condition(
        "Ready", "False", "KubeletNotReady", "simulated container runtime is down", stamp
    )


def kubelet_conditions(stamp: str, *, ready: bool = True) -> list[Json]:
    """The conditions the kubelet posts, all stamped ``stamp`` (heartbeat and transition): at
    registration, and again after the controller marked them Unknown (Ready as the kubelet
    last reported it)."""
    return [
        _condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok", stamp),
        _condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok", stamp),
        _condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok", stamp),
        ready_condition(stamp, ready),
    ]


def node_body(node: SimulatedNode, stamp: str) -> Json:
    """The Node object a kubelet registers for ``node``; ``stamp`` is now."""

    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **node.labels,
    }
    resources = {"ephemeral-storage": "100Gi", **node.capacity}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {
                "nodesysctl.io/simulated": "true",
                "nodesysctl.io/simulated-netns": node.netns or "",
            },
        },
        "spec": {"taints": node.taints} if node.taints else {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": kubelet_conditions(stamp),
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, node.name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, node.name)),
                "bootID": node.boot_id,
                "kernelVersion": platform.release(),
                "osImage": "nodesysctl simulated node",
                "containerRuntimeVersion": "simulated://0.1.0",
                "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": KUBERNETES_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def lease_body(name: str, node_uid: str, duration_seconds: int) -> Json:
    """A node's Lease, renewed now; owned by the Node, so the garbage collector deletes it
    with the Node."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration_seconds,
            "renewTime": micro_now(),
        },
    }


def renew_lease_body(name: str) -> Json:
    """The merge patch that renews a node's Lease now."""
    return {"spec": {"renewTime": micro_now(), "holderIdentity": name}}


class NodeLeases:
    """The nodes served (a registry the pod side reads too), their Node objects and Leases."""

    def __init__(self, core: Any, coordination: Any, *, lease_duration_seconds: int) -> None:
        self.core = core
        self.coordination = coordination
        self.lease_duration_seconds = lease_duration_seconds
        self.nodes: dict[str, SimulatedNode] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- the registry
    def add(self, node: SimulatedNode) -> None:
        with self._lock:
            self.nodes[node.name] = node

    def remove(self, name: str) -> SimulatedNode | None:
        with self._lock:
            return self.nodes.pop(name, None)

    def get(self, name: str) -> SimulatedNode | None:
        with self._lock:
            return self.nodes.get(name)

    # ----------------------------------------------------------------- Node objects
    def create(self, node: SimulatedNode) -> float:
        """Create the Node object and its Lease (its first heartbeat); returns when the Lease
        was renewed (``time.monotonic()``)."""
        created = self.core.create_node(node_body(node, now()))
        body = lease_body(node.name, created.metadata.uid, self.lease_duration_seconds)
        renewed = time.monotonic()
        try:
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.coordination.patch_namespaced_lease(
                node.name, NODE_LEASE_NAMESPACE, renew_lease_body(node.name), _content_type=MERGE
            )
        return renewed

    def delete_node(self, name: str) -> None:
        with contextlib.suppress(ApiException):  # 404: already gone
            self.core.delete_node(name)

    def report_boot_id(self, node: SimulatedNode) -> None:
        """After a reboot: the new ``nodeInfo.bootID`` and a fresh Ready heartbeat."""
        stamp = now()
        self.core.patch_node_status(
            node.name,
            {
                "status": {
                    "nodeInfo": {"bootID": node.boot_id},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "simulated kubelet is ready (rebooted)",
                            "lastHeartbeatTime": stamp,
                        }
                    ],
                }
            },
            _content_type=STRATEGIC,
        )

    def report_ready(self, name: str, ready: bool) -> None:
        """Post the Ready condition as a kubelet does when it turns (Not)Ready, e.g. when its
        container runtime goes down: status False with reason KubeletNotReady. The Lease keeps
        being renewed, so the node lifecycle controller keeps the status posted (it writes
        Unknown only for a node whose heartbeats stop) and taints the node
        ``node.kubernetes.io/not-ready`` while it is not Ready."""
        self.core.patch_node_status(
            name,
            {"status": {"conditions": [ready_condition(now(), ready)]}},
            _content_type=STRATEGIC,
        )

    def patch_labels(self, name: str, labels: Mapping[str, str | None]) -> None:
        self.core.patch_node(name, {"metadata": {"labels": dict(labels)}}, _content_type=MERGE)
