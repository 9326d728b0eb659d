"""The simulated kubelet: one object serves every simulated node (see the package docstring).

It wires the parts together and is what the rest of the dev cluster talks to: the node
registry with the Node objects and Leases (:mod:`.leases`), the Lease renewals in a process
of their own (:mod:`.heartbeats`, scheduled by :mod:`.renewals`), the Node watch that notices
the controller's Unknown marks (:mod:`.readiness`), the pod watch (:mod:`.list_watch`) and what
is done with the pods (:mod:`.pod_runner`). Threads here: the Node watch, the pod watch and the
heartbeat process's reader; pod work goes to the runner's pool.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client

from ..nodes import SimulatedNode
from .heartbeats import Heartbeats
from .leases import NodeLeases
from .list_watch import ListWatch
from .pod_runner import PodRunner
from .readiness import ReadyWatch
from .renewals import LeaseStats

log = logging.getLogger(__name__)

# A kubelet's Lease lasts 4 renew intervals (40 s, renewed every 10 s).
_LEASE_DURATION_PER_RENEW_INTERVAL = 4


class SimulatedKubelet:
    """Serves any number of :class:`SimulatedNode`; start() it, register() nodes, stop() it."""

    def __init__(
        self,
        api_factory: Callable[[], client.ApiClient],
        work_dir: Path,
        *,
        renew_interval: float = 10.0,
        lease_duration_seconds: int | None = None,
        renew_parallelism: int = 4,
        max_renew_parallelism: int = 32,
        max_parallel_pods: int = 8,
    ) -> None:
        # Typed as Any on purpose: bodies are plain dicts and pods are read as raw JSON.
        self._api: Any = api_factory()
        core: Any = client.CoreV1Api(self._api)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # unexpected errors of the background threads
        lease_duration = lease_duration_seconds or math.ceil(
            _LEASE_DURATION_PER_RENEW_INTERVAL * renew_interval
        )
        self.leases = NodeLeases(
            core, client.CoordinationV1Api(self._api), lease_duration_seconds=lease_duration
        )
        self.heartbeats = Heartbeats(
            self._api.configuration,
            self._error,
            renew_interval=renew_interval,
            lease_duration_seconds=lease_duration,
            parallelism=renew_parallelism,
            max_parallelism=max_renew_parallelism,
        )
        self.readiness = ReadyWatch(core, self._stop, self._error, self._marked_unknown)
        self.pods = PodRunner(
            core,
            work_dir / "pods",
            self._stop,
            self._error,
            self.leases.get,
            max_parallel_pods=max_parallel_pods,
        )
        self._pod_watch = ListWatch(
            core.list_pod_for_all_namespaces, "pod watch", self._stop, self._error, self.pods.on_pod
        )

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.heartbeats.start()
        for name, target in (
            ("sim-kubelet-nodes", self.readiness.run),
            ("sim-kubelet-pods", self._pod_watch.run),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.heartbeats.stop()
        self.readiness.stop()
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
        self.heartbeats.add(node.name, self.leases.create(node))

    def unregister(self, name: str, *, delete_node: bool) -> None:
        self.heartbeats.remove(name)
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
        # A repost after the controller's Unknown mark says the same as this report.
        self.heartbeats.set_ready(name, ready)

    def patch_labels(self, name: str, labels: Mapping[str, str | None]) -> None:
        self.leases.patch_labels(name, labels)

    # ----------------------------------------------------------------- heartbeats
    def pause_heartbeats(self, name: str) -> None:
        """The node's kubelet "hangs": no Lease renewals, no status posts (its pods are still
        served). After the grace period the node lifecycle controller marks it Unknown."""
        self.heartbeats.pause(name)

    def resume_heartbeats(self, name: str) -> None:
        """The kubelet is back: the Lease is renewed at once and, if the controller marked the
        node Unknown meanwhile, the conditions are posted again (Ready as last reported)."""
        seen = self.readiness.readiness(name)
        self.heartbeats.resume(name, post_conditions=seen is not None and seen.ready == "Unknown")

    def _marked_unknown(self, name: str) -> None:
        """The controller marked a node Unknown: a live kubelet answers at once with a
        heartbeat and its own conditions (a paused one when it resumes)."""
        if self.leases.get(name) is not None:
            self.heartbeats.heartbeat_now(name, post_conditions=True)

    def lease_stats(self, *, reset: bool = False) -> LeaseStats:
        """The Lease renewals so far (or since the last ``reset``); see :class:`LeaseStats`."""
        return self.heartbeats.stats(reset=reset)

    # ----------------------------------------------------------------- pods
    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """stdout+stderr of an agent pod's container (the API server cannot proxy logs to a
        simulated node). Empty if the pod never ran here."""
        return self.pods.pod_log(namespace, name, container)
