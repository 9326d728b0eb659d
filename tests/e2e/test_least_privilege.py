"""The shipped RBAC is enough: the operator, authenticated only as its ServiceAccount from
manifests/overlays/default (no admin certificate), completes the seed scenario."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.cluster import DevCluster
from devcluster.install import (
    OPERATOR_NAMESPACE,
    RBAC_KINDS,
    SERVICE_ACCOUNT,
    apply_documents,
    operator_rbac_documents,
    service_account_kubeconfig,
)
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from nodesysctl.planning import NodeState

from .conftest import OperatorProcess, Policies
from .test_operator import (
    KERNEL_DEFAULT_RANGE,
    RANGE,
    WIDENED,
    deployment,
    enforce_spec,
    node_result,
    policy_jobs,
    ready,
    rollouts,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def operator_rbac(devcluster: DevCluster, job_namespace: str, tmp_path: Path) -> Iterator[Path]:
    """The namespace, ServiceAccount and RBAC of manifests/overlays/default, applied as is."""
    docs = operator_rbac_documents(devcluster)
    assert {d["kind"] for d in docs} >= RBAC_KINDS, "the overlay lost part of its RBAC"
    manifest = apply_documents(devcluster, docs, tmp_path / "rbac.yaml")
    yield manifest
    devcluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(manifest))


def test_operator_with_only_its_service_account_fixes_a_node_and_restarts_once(
    operator_rbac: Path,
    devcluster: DevCluster,
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    tmp_path: Path,
    test_id: str,
) -> None:
    kubeconfig = service_account_kubeconfig(devcluster, tmp_path / "sa.kubeconfig")
    whoami = devcluster.kubectl(
        "auth",
        "whoami",
        "--kubeconfig",
        str(kubeconfig),
        "-o",
        "jsonpath={.status.userInfo.username}",
    )
    assert whoami.stdout == f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
    operator = start_operator(kubeconfig=kubeconfig)
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    deployment(api_client, test_namespace, "web", node.name, {"restart": "yes"})
    name = f"{test_id}-sa"
    policies.create(name, enforce_spec(
        node_factory.selector,
        restart={"selector": {"matchLabels": {"restart": "yes"}}, "namespaces": [test_namespace]},
    ))  # fmt: skip
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    wait_policy(policies, name, lambda b: ready(b) and "lastRestart" in b["status"],
                "Ready with a completed restart wave")  # fmt: skip
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    assert rollouts(api_client, test_namespace, "web")[0] == 2

    # Deleting the policy works with the same identity: finalizer, Jobs, node annotations.
    policies.delete(name)
    wait_for(lambda: not policy_jobs(api_client, name), timeout=60, what="the policy's Jobs gone")
    assert node_result(api_client, node.name, name) is None
    log = operator.log()
    assert "403" not in log, log[-5000:]
    assert "Forbidden" not in log, log[-5000:]
