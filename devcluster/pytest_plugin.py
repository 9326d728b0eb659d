"""pytest fixtures for tests against the dev cluster (loaded by tests/conftest.py).

One control plane per test session (``devcluster``); per-test isolation through unique names:
``node_factory`` makes nodes named ``<test_id>-n<i>`` labelled ``nodesysctl.io/test-id=<test_id>``
and ``test_namespace`` a namespace ``<test_id>``; both are deleted after the test.

Without the binaries (``make controlplane``) or without root (network namespaces), the tests
that use these fixtures are skipped, or fail when ``NODESYSCTL_REQUIRE_CONTROLPLANE=1`` (as
``make test`` and CI set it).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .binaries import BinariesNotFoundError, find_binaries
from .cluster import DevCluster
from .controlplane import ControlPlane, ControlPlaneError
from .nodes import SimulatedNode

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
