"""The dev cluster: a :class:`ControlPlane`, a :class:`SimulatedKubelet` and its nodes."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .controlplane import DIR_PREFIX, OWNER_FILE, ControlPlane
from .images import Images, build_images
from .kubelet import SimulatedKubelet
from .kubelet.readiness import NOT_READY_TAINT
from .nodes import SimulatedNode, netns_name
from .realnode import RealNode, realnode_netns_name, reap_real_nodes
from .waiting import wait_for

log = logging.getLogger(__name__)

# The simulated kubelet renews each Lease once per this fraction of the controller's grace
# period, whatever the number of nodes: a real kubelet renews every 10 s against the 50 s
# default. The longest gap the controller can see is one period plus its monitor period.
RENEW_FRACTION_OF_GRACE = 0.2
NETNS_LIST = "netns.list"  # every netns this cluster made, for reap_stale_clusters()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_clusters(tmp: Path | None = None) -> list[Path]:
    """Remove what dev clusters of dead processes left (a SIGKILLed pytest): their real
    nodes' leftovers (stray processes, container cgroups, address slots), their network
    namespaces and directories. Their components died with them (PR_SET_PDEATHSIG)."""
    reaped = []
    for directory in sorted((tmp or Path(tempfile.gettempdir())).glob(f"{DIR_PREFIX}*")):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being set up right now, or not ours
        if _alive(owner):
            continue
        reap_real_nodes(directory)
        netns_list = directory / NETNS_LIST
        if netns_list.exists():
            for name in netns_list.read_text().split():
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)
        log.warning("removed the leftovers of a dead dev cluster: %s", directory)
        reaped.append(directory)
    return reaped


class DevCluster:
    """A real control plane plus simulated nodes.

    >>> with DevCluster() as cluster:
    ...     node = cluster.add_node("n1", {"pool": "a"},
    ...                             sysctls={"net.ipv4.ip_local_port_range": "1024 65000"})
    ...     core = client.CoreV1Api(cluster.api)
    """

    def __init__(self, control_plane: ControlPlane | None = None, **kubelet_options: Any) -> None:
        """``kubelet_options`` go to :class:`SimulatedKubelet`; ``renew_interval`` defaults
        to RENEW_FRACTION_OF_GRACE of the control plane's node-monitor grace period."""
        self.control_plane = control_plane or ControlPlane()
        self.tag = secrets.token_hex(3)  # keeps this cluster's netns names apart from others'
        self._kubelet_options = kubelet_options
        self._kubelet: SimulatedKubelet | None = None
        self._api: Any = None
        self.nodes: dict[str, SimulatedNode] = {}
        self.real_nodes: dict[str, RealNode] = {}
        self._images: Images | None = None
        self._stopped = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        reap_stale_clusters()
        self.control_plane.start()
        # After the control plane's own atexit hook, so this one runs first (LIFO): the
        # kubelet stops and the netns go before the API server does.
        atexit.register(self.stop)
        try:
            self._api = self.control_plane.api_client()
            options = {
                "renew_interval": RENEW_FRACTION_OF_GRACE
                * self.control_plane.node_monitor_grace_seconds,
                **self._kubelet_options,
            }
            self._kubelet = SimulatedKubelet(
                self.control_plane.api_client, self.control_plane.dir / "kubelet", **options
            )
            self._kubelet.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the kubelet (killing agent processes), remove every node's netns and host
        root, stop the control plane and remove its directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self._kubelet is not None:
            self._kubelet.stop()
        for node in list(self.nodes.values()):
            node.destroy()
        self.nodes.clear()
        for real in list(self.real_nodes.values()):
            real.destroy()
        self.real_nodes.clear()
        if self._api is not None:
            self._api.close()
            self._api = None
        self.control_plane.stop()

    # ----------------------------------------------------------------- access
    @property
    def api(self) -> Any:
        """The shared admin ApiClient (thread-safe for ordinary calls)."""
        if self._api is None:
            raise RuntimeError("the dev cluster is not started")
        return self._api

    @property
    def kubelet(self) -> SimulatedKubelet:
        if self._kubelet is None:
            raise RuntimeError("the dev cluster is not started")
        return self._kubelet

    @property
    def kubelet_errors(self) -> list[str]:
        """Unexpected errors of the simulated kubelet's threads (empty when all is well)."""
        return list(self._kubelet.errors) if self._kubelet is not None else []

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.admin_kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def dir(self) -> Path:
        return self.control_plane.dir

    def kubectl(self, *args: str, **kwargs: Any) -> Any:
        """The built kubectl as admin; see :meth:`ControlPlane.kubectl`."""
        return self.control_plane.kubectl(*args, **kwargs)

    # ----------------------------------------------------------------- nodes
    def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        netns: bool = True,
        sysctls: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        wait_ready: bool = True,
    ) -> SimulatedNode:
        """Create a simulated node: the machine (netns or fake /proc/sys) with ``sysctls``
        applied, then its Node object and Lease. With ``wait_ready`` it returns once the node
        is schedulable (Ready and without the not-ready taint)."""
        if name in self.nodes:
            raise ValueError(f"node {name} exists already")
        node = SimulatedNode(
            name,
            root=self.dir / "nodes" / name,
            labels=labels,
            netns=netns_name(self.tag, name) if netns else None,
            sysctls=sysctls,
            capacity=capacity,
            taints=taints,
        )
        self.nodes[name] = node
        try:
            if node.netns:
                with (self.dir / NETNS_LIST).open("a") as netns_list:
                    netns_list.write(node.netns + "\n")
            node.create()
            self.kubelet.register(node)
        except BaseException:
            self.nodes.pop(name, None)
            node.destroy()
            raise
        if wait_ready:
            self.wait_node_schedulable(name)
        return node

    def add_nodes(
        self,
        names: Iterable[str],
        labels: Mapping[str, str] | None = None,
        *,
        netns: bool = False,
        sysctls: Mapping[str, str] | None = None,
        parallel: int = 8,
        wait_ready: bool = True,
    ) -> list[SimulatedNode]:
        """Many nodes at once (default: without netns, for scale)."""
        names = list(names)
        with ThreadPoolExecutor(parallel) as pool:
            nodes = list(
                pool.map(
                    lambda n: self.add_node(
                        n, labels, netns=netns, sysctls=sysctls, wait_ready=False
                    ),
                    names,
                )
            )
        if wait_ready:
            for name in names:
                self.wait_node_schedulable(name, timeout=120)
        return nodes

    def remove_node(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            node.delete()

    @property
    def images(self) -> Images:
        """The nodesysctl and pause images real nodes import (built, or from the cache)."""
        if self._images is None:
            self._images = build_images()
        return self._images

    def add_real_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        sysctls: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        wait_ready: bool = True,
    ) -> RealNode:
        """A real node (devcluster.realnode): its own network, mount and PID namespaces,
        containerd, runc and a kubelet that registers the Node itself, with ``sysctls``
        applied to its network namespace before it starts. With ``wait_ready`` it returns
        once the node is schedulable."""
        if name in self.nodes or name in self.real_nodes:
            raise ValueError(f"node {name} exists already")
        node = RealNode(
            name,
            control_plane=self.control_plane,
            directory=self.dir / "realnodes" / name,
            netns=realnode_netns_name(self.tag, name),
            images=self.images,
            labels=labels,
            sysctls=sysctls,
            taints=taints,
        )
        self.real_nodes[name] = node
        try:
            with (self.dir / NETNS_LIST).open("a") as netns_list:
                netns_list.write(node.netns + "\n")
            node.create()
            node.wait_registered_and_label(self.api)
        except BaseException:
            self.real_nodes.pop(name, None)
            node.destroy()
            raise
        if wait_ready:
            self.wait_node_schedulable(name, timeout=120)
        return node

    def remove_real_node(self, name: str) -> None:
        """Stop and remove a real node, and delete its Node object."""
        node = self.real_nodes.pop(name, None)
        if node is None:
            return
        node.destroy()
        try:
            client.CoreV1Api(self.api).delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def wait_node_schedulable(self, name: str, timeout: float = 60) -> None:
        core: Any = client.CoreV1Api(self.api)

        def schedulable() -> bool:
            node = core.read_node(name)
            ready = any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )
            tainted = any(t.key == NOT_READY_TAINT for t in node.spec.taints or [])
            return ready and not tainted

        wait_for(schedulable, timeout=timeout, what=f"node {name} to be schedulable")

    # ----------------------------------------------------------------- namespaces and objects
    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        """Create a namespace and wait for its "default" ServiceAccount (pods need it)."""
        core: Any = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": name, "labels": dict(labels or {})}})
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=30,
            what=f"ServiceAccount {name}/default",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            client.CoreV1Api(self.api).delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def apply_file(self, path: Path | str, *, server_side: bool = True) -> str:
        """``kubectl apply`` (server-side by default) with the built kubectl."""
        args = ["apply", "-f", str(path)]
        if server_side:
            args += ["--server-side", "--field-manager=devcluster"]
        return str(self.kubectl(*args).stdout)

    def install_crds(self, directory: Path, timeout: float = 60) -> list[str]:
        """Apply every CRD YAML in ``directory`` and wait until each is Established."""
        names: list[str] = []
        for path in sorted(directory.glob("*.yaml")):
            found = [
                doc["metadata"]["name"]
                for doc in yaml.safe_load_all(path.read_text())
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
            ]
            if found:  # skip kustomization.yaml and the like
                self.apply_file(path)
                names += found
        ext: Any = client.ApiextensionsV1Api(self.api)

        def established(name: str) -> bool:
            crd = ext.read_custom_resource_definition(name)
            return any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            )

        for name in names:
            wait_for(
                functools.partial(established, name),
                timeout=timeout,
                what=f"CRD {name} Established",
            )
        return names


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
