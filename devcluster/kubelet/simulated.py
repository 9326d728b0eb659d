"""The simulated kubelet: one object serves every simulated node (see the package docstring).

It wires the parts together and is what the rest of the dev cluster talks to: the node
registry with the Node objects and Leases (:mod:`.leases`), the pod watch (:mod:`.pod_watch`)
and what is done with the pods (:mod:`.pod_runner`). Two threads: the Lease renewals and the
pod watch; pod work goes to the runner's pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client

from ..nodes import SimulatedNode
from .leases import NodeLeases
from .pod_runner import PodRunner
from .pod_watch import PodWatch

log = logging.getLogger(__name__)


class SimulatedKubelet:
    """Serves any number of :class:`SimulatedNode`; start() it, register() nodes, stop() it."""

    def __init__(
        self,
        api_factory: Callable[[], client.ApiClient],
        work_dir: Path,
        *,
        lease_duration_seconds: int = 40,
        renew_interval: float = 10.0,
        max_parallel_pods: int = 8,
    ) -> None:
        # Typed as Any on purpose: bodies are plain dicts and pods are read as raw JSON.
        self._api: Any = api_factory()
        core: Any = client.CoreV1Api(self._api)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected errors of the background threads
        self.leases = NodeLeases(
            core,
            client.CoordinationV1Api(self._api),
            self._stop,
            self._error,
            lease_duration_seconds=lease_duration_seconds,
            renew_interval=renew_interval,
        )
        self.pods = PodRunner(
            core,
            work_dir / "pods",
            self._stop,
            self._error,
            self.leases.get,
            max_parallel_pods=max_parallel_pods,
        )
        self._pod_watch = PodWatch(core, self._stop, self._error, self.pods.on_pod)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for name, target in (
            ("sim-kubelet-leases", self.leases.run),
            ("sim-kubelet-pods", self._pod_watch.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._pod_watch.stop()
        self.pods.stop()
        for thread in self._threads:
            thread.join(timeout=15)
        self._api.close()

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append(message)

    # ----------------------------------------------------------------- nodes
    def register(self, node: SimulatedNode) -> None:
        """Create the Node object and its Lease; from now on the node's pods are served."""
        self.leases.add(node)
        node.kubelet = self
        self.leases.create(node)

    def unregister(self, name: str, *, delete_node: bool) -> None:
        node = self.leases.remove(name)
        if node is not None:
            node.kubelet = None
        if delete_node:
            self.leases.delete_node(name)

    def report_boot_id(self, node: SimulatedNode) -> None:
        """After a reboot: the new ``nodeInfo.bootID`` and a fresh Ready heartbeat."""
        self.leases.report_boot_id(node)

    def report_ready(self, name: str, ready: bool) -> None:
        """Post the node's Ready condition True or False (its Lease is renewed either way)."""
        self.leases.report_ready(name, ready)

    def patch_labels(self, name: str, labels: Mapping[str, str | None]) -> None:
        self.leases.patch_labels(name, labels)

    # ----------------------------------------------------------------- pods
    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """stdout+stderr of an agent pod's container (the API server cannot proxy logs to a
        simulated node). Empty if the pod never ran here."""
        return self.pods.pod_log(namespace, name, container)
