"""The shipped RBAC is enough: the operator, authenticated only as its ServiceAccount from
manifests/overlays/default (no admin certificate), completes the seed scenario."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodesysctl.devcluster.cluster import DevCluster
from nodesysctl.devcluster.nodes import SimulatedNode
from nodesysctl.devcluster.waiting import wait_for
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

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "nodesysctl-system"
SERVICE_ACCOUNT = "nodesysctl-operator"
# Only the identity and its permissions are applied: the Deployment would be a second
# operator, and the job namespace belongs to the session.
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


@pytest.fixture
def operator_rbac(devcluster: DevCluster, job_namespace: str, tmp_path: Path) -> Iterator[Path]:
    rendered = devcluster.kubectl("kustomize", str(REPO / "manifests/overlays/default")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    wanted = [
        d for d in docs
        if d["kind"] in RBAC_KINDS
        or (d["kind"] == "Namespace" and d["metadata"]["name"] == OPERATOR_NAMESPACE)
    ]  # fmt: skip
    assert {d["kind"] for d in wanted} >= RBAC_KINDS, "the overlay lost part of its RBAC"
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text(yaml.safe_dump_all(wanted))
    devcluster.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", str(manifest))
    yield manifest
    devcluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(manifest))


def service_account_kubeconfig(devcluster: DevCluster, path: Path) -> Path:
    token = devcluster.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {
            "server": devcluster.server,
            "certificate-authority": str(devcluster.control_plane.pki.ca.cert)}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "dev", "user": SERVICE_ACCOUNT}}],
        "current-context": "sa",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


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
