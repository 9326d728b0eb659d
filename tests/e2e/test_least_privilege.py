"""The shipped RBAC is enough, and the admission fence lets the operator's own calls through:
the operator, authenticated only as its ServiceAccount from manifests/overlays/default (no
admin certificate), completes the seed scenario with no 403."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.cluster import DevCluster
from devcluster.install import (
    FENCE_KINDS,
    OPERATOR_NAMESPACE,
    RBAC_KINDS,
    SERVICE_ACCOUNT,
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
def operator_rbac(operator_identity: Path) -> Path:
    """The namespace, ServiceAccount, RBAC and fence of manifests/overlays/default, applied as
    is and enforced; the e2e session installed them (conftest.operator_identity) and keeps them
    to its end, since the fence's parameter is the ClusterRoleBinding."""
    docs = [d for d in yaml.safe_load_all(operator_identity.read_text()) if d]
    assert {d["kind"] for d in docs} >= RBAC_KINDS, "the overlay lost part of its RBAC"
    assert {d["kind"] for d in docs} >= FENCE_KINDS, "the overlay lost its admission fence"
    return operator_identity


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
