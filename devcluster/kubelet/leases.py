"""Node keeping: the Node objects of the simulated nodes, and the Leases that keep them Ready.

Each node's Node object is registered once (capacity, allocatable, conditions,
``nodeInfo.bootID``, ``kubeletVersion``) with its Lease in ``kube-node-lease``; from then on
only the Lease is renewed: the node lifecycle controller counts a renewed Lease as a heartbeat,
so thousands of nodes cost one small write each per renew interval, never a status write.
"""

from __future__ import annotations

import contextlib
import platform
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..binaries import KUBERNETES_VERSION
from ..nodes import NODE_IP, SimulatedNode
from .api_formats import MERGE, STRATEGIC, micro_now, now

Json = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
MAX_LEASE_WRITES_PER_SECOND = 100
MAX_RENEW_PERIOD = 40.0


def node_body(node: SimulatedNode, stamp: str) -> Json:
    """The Node object a kubelet registers for ``node``; ``stamp`` is now."""

    def condition(kind: str, status: str, reason: str, message: str) -> Json:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }

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
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition("Ready", "True", "KubeletReady", "simulated kubelet is ready"),
            ],
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


class NodeLeases:
    """The nodes served (a registry the pod side reads too), their Node objects and Leases."""

    def __init__(
        self,
        core: Any,
        coordination: Any,
        stop: threading.Event,
        report_error: Callable[[str], None],
        *,
        lease_duration_seconds: int,
        renew_interval: float,
    ) -> None:
        self.core = core
        self.coordination = coordination
        self._stop = stop
        self._report_error = report_error
        self.lease_duration_seconds = lease_duration_seconds
        self.renew_interval = renew_interval
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
    def create(self, node: SimulatedNode) -> None:
        """Create the Node object and its Lease."""
        created = self.core.create_node(node_body(node, now()))
        self._create_lease(node.name, created.metadata.uid)

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
        reason, message = (
            ("KubeletReady", "simulated kubelet is ready")
            if ready
            else ("KubeletNotReady", "simulated container runtime is down")
        )
        stamp = now()
        self.core.patch_node_status(
            name,
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "False",
                            "reason": reason,
                            "message": message,
                            "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp,
                        }
                    ]
                }
            },
            _content_type=STRATEGIC,
        )

    def patch_labels(self, name: str, labels: Mapping[str, str | None]) -> None:
        self.core.patch_node(name, {"metadata": {"labels": dict(labels)}}, _content_type=MERGE)

    # ----------------------------------------------------------------- Leases
    def _create_lease(self, name: str, node_uid: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                # Owned by the Node, so the garbage collector deletes it with the Node.
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.lease_duration_seconds,
                "renewTime": micro_now(),
            },
        }
        try:
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._renew_lease(name)

    def _renew_lease(self, name: str) -> None:
        self.coordination.patch_namespaced_lease(
            name,
            NODE_LEASE_NAMESPACE,
            {"spec": {"renewTime": micro_now(), "holderIdentity": name}},
            _content_type=MERGE,
        )

    def renew_period(self, nodes: int) -> float:
        """Seconds between two renewals of one node's Lease: ``renew_interval`` (10 s, as a
        kubelet), stretched for big clusters to at most MAX_LEASE_WRITES_PER_SECOND in all,
        but never past MAX_RENEW_PERIOD (the controller-manager's grace period is 60 s)."""
        return min(max(self.renew_interval, nodes / MAX_LEASE_WRITES_PER_SECOND), MAX_RENEW_PERIOD)

    def run(self) -> None:
        """Renew every node's Lease once per period, the writes spread evenly over it, until
        the stop event is set."""
        while not self._stop.is_set():
            with self._lock:
                names = list(self.nodes)
            period = self.renew_period(len(names))
            started = time.monotonic()
            for index, name in enumerate(names):
                due = started + period * index / len(names)
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                if name in self.nodes:
                    self._renew_one(name)
            if self._stop.wait(max(0.0, started + period - time.monotonic())):
                return

    def _renew_one(self, name: str) -> None:
        try:
            self._renew_lease(name)
        except ApiException as exc:
            if exc.status == 404 and name in self.nodes:  # the Lease was deleted: recreate it
                with contextlib.suppress(ApiException):
                    self._create_lease(name, self.core.read_node(name).metadata.uid)
            elif exc.status != 404:
                self._report_error(f"renewing the lease of {name}: {exc.status} {exc.reason}")
        except Exception as exc:
            if not self._stop.is_set():
                self._report_error(f"renewing the lease of {name}: {exc!r}")
