"""Install nodesysctl into a dev cluster the way a user would, and run the operator with the
identity the manifests give it (its ServiceAccount, not the admin certificate)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from nodesysctl.cli import METRICS_FLAG

from .cluster import DevCluster
from .realnode import REAL_NODE_LABEL, RELAY_ADDRESS

REPO = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "nodesysctl-system"
JOB_NAMESPACE = "nodesysctl-jobs"
SERVICE_ACCOUNT = "nodesysctl-operator"
OPERATOR_DEPLOYMENT = "nodesysctl-operator"
UPSTREAM_IMAGE = "ghcr.io/nodesysctl/nodesysctl"
# The operator's identity and permissions; the Deployment is left out because the dev cluster
# runs the operator as a local process (its pod would not run anything here).
RBAC_KINDS = frozenset(
    {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)
# The admission fence around that identity and the job namespace (manifests/base/fence.yaml);
# its parameter is the operator's ClusterRoleBinding, so it is installed with the RBAC.
FENCE_KINDS = frozenset({"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"})


def operator_rbac_documents(cluster: DevCluster, overlay: str = "default") -> list[dict[str, Any]]:
    """The operator namespace, RBAC and admission fence objects of a rendered overlay (the
    fence after the ClusterRoleBinding it reads, as the overlay renders them)."""
    rendered = cluster.kubectl("kustomize", str(REPO / "manifests" / "overlays" / overlay)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    return [
        d for d in docs
        if d["kind"] in RBAC_KINDS | FENCE_KINDS
        or (d["kind"] == "Namespace" and d["metadata"]["name"] == OPERATOR_NAMESPACE)
    ]  # fmt: skip


def apply_documents(cluster: DevCluster, docs: list[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("apply", "--server-side", "--field-manager=devcluster", "-f", str(path))
    return path


def service_account_kubeconfig(
    cluster: DevCluster,
    path: Path,
    *,
    namespace: str = OPERATOR_NAMESPACE,
    service_account: str = SERVICE_ACCOUNT,
) -> Path:
    """A kubeconfig that authenticates with a fresh token of the ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {
            "server": cluster.server,
            "certificate-authority": str(cluster.control_plane.pki.ca.cert)}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "dev", "user": service_account}}],
        "current-context": "operator",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def start_operator(kubeconfig: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """`nodesysctl run`, as a user runs it, logging to `log_path`. Its /metrics listens on a
    free loopback port unless `extra` says where: the machine's :8081 may be taken, and a
    test may run more than one operator."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    metrics = () if METRICS_FLAG in extra else (METRICS_FLAG, "127.0.0.1:0")
    argv = [sys.executable, "-m", "nodesysctl.cli", "run", "--job-namespace", JOB_NAMESPACE,
            *metrics, *extra]  # fmt: skip
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def registryless_overlay(directory: Path, image_ref: str) -> Path:
    """A kustomization over manifests/overlays/default that changes what a cluster without a
    registry needs and nothing else: the image (kustomize `images:`, and the agent image env
    that must match it), `imagePullPolicy: Never`, the API server's address as pods on these
    nodes reach it (the relay in each node's namespace), and the real nodes (no simulated node
    may get the operator's pod: it would "run" it without a process)."""
    name, _, tag = image_ref.rpartition(":")
    directory.mkdir(parents=True, exist_ok=True)
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": OPERATOR_NAMESPACE},
        "spec": {"template": {"spec": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "containers": [{
                "name": "operator",
                "imagePullPolicy": "Never",
                "env": [
                    {"name": "NODESYSCTL_AGENT_IMAGE", "value": image_ref},
                    {"name": "KUBERNETES_SERVICE_HOST", "value": RELAY_ADDRESS},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": "443"},
                ],
            }],
        }}},
    }  # fmt: skip
    (directory / "registryless.yaml").write_text(yaml.safe_dump(patch))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(REPO / "manifests" / "overlays" / "default", directory)],
        "images": [{"name": UPSTREAM_IMAGE, "newName": name, "newTag": tag}],
        "patches": [{"path": "registryless.yaml"}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory
