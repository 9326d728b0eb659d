"""pytest fixtures for tests against the dev cluster (loaded by tests/conftest.py).

One control plane per test session (``devcluster``); per-test isolation through unique names:
``node_factory`` makes nodes named ``<test_id>-n<i>`` labelled ``nodesysctl.io/test-id=<test_id>``
and ``test_namespace`` a namespace ``<test_id>``; both are deleted after the test.

Without the binaries (``make controlplane``) or without root (network namespaces), the tests
that use these fixtures are skipped, or fail when ``NODESYSCTL_REQUIRE_CONTROLPLANE=1`` (as
``make test`` and CI set it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .binaries import BinariesNotFoundError, find_binaries
from .cluster import DevCluster
from .controlplane import ControlPlane, ControlPlaneError
from .images import ImageBuildError
from .nodes import SimulatedNode
from .realnode import RealNode

REQUIRE_ENV = "NODESYSCTL_REQUIRE_CONTROLPLANE"
TEST_ID_LABEL = "nodesysctl.io/test-id"

_cluster_key = pytest.StashKey[DevCluster]()


def _cannot_run(reason: str) -> NoReturn:
    message = f"CONTROL PLANE TESTS NOT RUN: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 requires them)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def devcluster(request: pytest.FixtureRequest) -> Iterator[DevCluster]:
    """The session's dev cluster: real etcd, kube-apiserver, controller-manager, scheduler
    and the simulated kubelet. Stopped (no processes, netns or temp dirs left) at session end,
    whatever happened."""
    if os.geteuid() != 0:
        _cannot_run("simulated nodes need root (network namespaces)")
    try:
        binaries = find_binaries()
    except BinariesNotFoundError as exc:
        _cannot_run(str(exc))
    logging.getLogger("devcluster").setLevel(logging.INFO)
    cluster = DevCluster(ControlPlane(binaries=binaries))
    try:
        cluster.start()
    except ControlPlaneError as exc:
        pytest.fail(f"the dev control plane did not start:\n{exc}", pytrace=False)
    request.session.stash[_cluster_key] = cluster
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kubeconfig_path(devcluster: DevCluster) -> Path:
    """The admin kubeconfig (client certificate in system:masters)."""
    return devcluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(devcluster: DevCluster) -> Any:
    """The session's shared admin ``kubernetes.client.ApiClient``."""
    return devcluster.api


@pytest.fixture(scope="session")
def kubectl(devcluster: DevCluster) -> Callable[..., Any]:
    """``kubectl("get", "nodes")`` runs the built kubectl as admin -> CompletedProcess."""
    return devcluster.kubectl


@pytest.fixture(scope="session")
def crds_installed(devcluster: DevCluster, pytestconfig: pytest.Config) -> list[str]:
    """Apply every CRD in ``<rootdir>/crds`` once per session; returns the CRD names."""
    crd_dir = pytestconfig.rootpath / "crds"
    if not any(crd_dir.glob("*.yaml")):
        pytest.skip(f"no CRD in {crd_dir} yet")
    return devcluster.install_crds(crd_dir)


@pytest.fixture
def test_id() -> str:
    """A short id unique to this test, usable in names and as a label value."""
    return "t" + secrets.token_hex(3)


@pytest.fixture
def test_namespace(devcluster: DevCluster, test_id: str) -> Iterator[str]:
    """A fresh namespace (its default ServiceAccount exists); deleted after the test."""
    name = devcluster.create_namespace(test_id, {TEST_ID_LABEL: test_id})
    yield name
    devcluster.delete_namespace(name)


class NodeFactory:
    """Makes this test's simulated nodes; every one carries the label ``selector``."""

    def __init__(self, cluster: DevCluster, test_id: str) -> None:
        self.cluster = cluster
        self.test_id = test_id
        self.nodes: list[SimulatedNode] = []

    @property
    def selector(self) -> dict[str, str]:
        """``{TEST_ID_LABEL: test_id}``: a nodeSelector/matchLabels for this test's nodes."""
        return {TEST_ID_LABEL: self.test_id}

    def _name(self, name: str | None) -> str:
        return name or f"{self.test_id}-n{len(self.nodes)}"

    def __call__(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        sysctls: Mapping[str, str] | None = None,
        netns: bool = True,
        name: str | None = None,
        taints: list[dict[str, str]] | None = None,
        wait_ready: bool = True,
    ) -> SimulatedNode:
        node = self.cluster.add_node(
            self._name(name),
            {**self.selector, **(labels or {})},
            netns=netns,
            sysctls=sysctls,
            taints=taints,
            wait_ready=wait_ready,
        )
        self.nodes.append(node)
        return node

    def many(
        self,
        count: int,
        labels: Mapping[str, str] | None = None,
        *,
        sysctls: Mapping[str, str] | None = None,
        netns: bool = False,
    ) -> list[SimulatedNode]:
        """``count`` nodes at once; without netns by default (fake /proc/sys trees, for scale)."""
        names = [f"{self.test_id}-n{len(self.nodes) + i}" for i in range(count)]
        nodes = self.cluster.add_nodes(
            names, {**self.selector, **(labels or {})}, netns=netns, sysctls=sysctls
        )
        self.nodes.extend(nodes)
        return nodes

    def remove(self, node: SimulatedNode) -> None:
        """Delete one node now (Node object, netns, host root)."""
        self.cluster.remove_node(node.name)
        self.nodes.remove(node)

    def cleanup(self) -> None:
        for node in self.nodes:
            self.cluster.remove_node(node.name)
        self.nodes.clear()


# What a real node runs (hack/install-node-runtime.sh installs them; `make test` runs it).
REAL_NODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "tini", "socat",
                   "umoci", "skopeo", "debootstrap", "nsenter", "unshare")  # fmt: skip


class RealNodeFactory:
    """Makes this test's real nodes (:class:`RealNode`); every one carries ``selector``."""

    def __init__(self, cluster: DevCluster, test_id: str) -> None:
        self.cluster = cluster
        self.test_id = test_id
        self.nodes: list[RealNode] = []

    @property
    def selector(self) -> dict[str, str]:
        return {TEST_ID_LABEL: self.test_id}

    def __call__(
        self,
        labels: Mapping[str, str] | None = None,
        *,
        sysctls: Mapping[str, str] | None = None,
        name: str | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> RealNode:
        node = self.cluster.add_real_node(
            name or f"{self.test_id}-r{len(self.nodes)}",
            {**self.selector, **(labels or {})},
            sysctls=sysctls,
            taints=taints,
        )
        self.nodes.append(node)
        return node

    def many(self, *sysctls: Mapping[str, str] | None) -> list[RealNode]:
        """One node per ``sysctls`` entry, started in parallel (each is mostly waiting)."""
        names = [f"{self.test_id}-r{len(self.nodes) + i}" for i in range(len(sysctls))]
        with ThreadPoolExecutor(len(names) or 1) as pool:
            futures = [
                pool.submit(self.cluster.add_real_node, name, self.selector, sysctls=values)
                for name, values in zip(names, sysctls, strict=True)
            ]
            nodes = []
            for future in futures:
                with contextlib.suppress(Exception):
                    nodes.append(future.result())
        self.nodes.extend(nodes)
        for future in futures:
            future.result()  # raises the first failure, once all are accounted for
        return nodes

    def remove(self, node: RealNode) -> None:
        """Stop and delete one node now."""
        self.cluster.remove_real_node(node.name)
        self.nodes.remove(node)

    def cleanup(self) -> None:
        with ThreadPoolExecutor(len(self.nodes) or 1) as pool:
            list(pool.map(self.cluster.remove_real_node, [n.name for n in self.nodes]))
        self.nodes.clear()


@pytest.fixture(scope="session")
def real_nodes_available(devcluster: DevCluster) -> DevCluster:
    """The dev cluster, once the node runtime and the images are there (else skip or fail,
    as for the control plane)."""
    missing = [tool for tool in REAL_NODE_TOOLS if shutil.which(tool) is None]
    if missing:
        _cannot_run(f"real nodes need {', '.join(missing)}: run `make node-runtime`")
    try:
        devcluster.control_plane.binaries.kubelet  # noqa: B018 - raises if it is not built
        devcluster.images  # noqa: B018 - builds them, or takes them from the cache
    except (BinariesNotFoundError, ImageBuildError) as exc:
        _cannot_run(str(exc))
    return devcluster


@pytest.fixture(scope="module")
def real_node_factory(
    real_nodes_available: DevCluster, request: pytest.FixtureRequest
) -> Iterator[RealNodeFactory]:
    """``real_node_factory(labels, sysctls={...})`` -> a schedulable :class:`RealNode` named
    ``<module id>-r<i>``; all of them are stopped and deleted after the module (real nodes
    take seconds to start, so a module's tests share them)."""
    factory = RealNodeFactory(real_nodes_available, "m" + secrets.token_hex(3))
    yield factory
    factory.cleanup()


@pytest.fixture
def node_factory(devcluster: DevCluster, test_id: str) -> Iterator[NodeFactory]:
    """``node_factory(labels, sysctls={...}, netns=True)`` -> a Ready :class:`SimulatedNode`;
    all of them are deleted (Node, netns, host root) after the test."""
    factory = NodeFactory(devcluster, test_id)
    yield factory
    factory.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """On a failing test that used the dev cluster: add the kubelet's errors and the tail of
    every component's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "devcluster" not in getattr(item, "fixturenames", ()):
        return
    cluster = item.session.stash.get(_cluster_key, None)
    if cluster is None:
        return
    errors = "\n".join(cluster.kubelet_errors[-20:])
    report.sections.append(("simulated kubelet errors", errors or "(none)"))
    report.sections.append(("dev control plane logs (tails)", cluster.control_plane.logs()))
    for node in cluster.real_nodes.values():
        tails = "\n".join(
            f"----- {part}\n" + "\n".join(node.log(part).splitlines()[-40:])
            for part in ("init", "kubelet", "containerd")
        )
        report.sections.append((f"real node {node.name} logs (tails)", tails))
