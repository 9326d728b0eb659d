"""The shipped install on real nodes: `kubectl apply -k` of the default overlay, with only the
image pointed at the locally built one (and told never to pull), so the operator runs as the
pod of its real Deployment and creates agent Jobs that run in real containers.

Real nodes take seconds to start and the operator a few more, so the module's tests share three
nodes and one install; they run in file order and build on each other (the seed scenario, then
the reboot of a node it fixed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from devcluster.images import NODESYSCTL_NAME
from devcluster.install import (
    JOB_NAMESPACE,
    OPERATOR_DEPLOYMENT,
    OPERATOR_NAMESPACE,
    registryless_overlay,
)
from devcluster.waiting import wait_for
from nodesysctl.leasing import DEFAULT_LEASE_NAME
from tests.kube_json import read_json

OPERATOR = OPERATOR_DEPLOYMENT
REPLICAS = 2  # manifests/base/deployment.yaml: one leader, one standby


def operator_pods(api: Any) -> list[dict[str, Any]]:
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod,
        OPERATOR_NAMESPACE,
        label_selector=f"app.kubernetes.io/name={OPERATOR}",
    )
    return list(pods["items"])


def leader_of(api: Any, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod holding the leader-election Lease (its identity is the pod name + "_" + a
    random suffix), if one of `pods` does."""
    try:
        lease = read_json(
            client.CoordinationV1Api(api).read_namespaced_lease,
            DEFAULT_LEASE_NAME,
            OPERATOR_NAMESPACE,
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    holder = str(lease["spec"].get("holderIdentity") or "")
    found = [p for p in pods if holder.startswith(p["metadata"]["name"] + "_")]
    return found[0] if found else None


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def installed(
    real_nodes_available: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The default overlay applied (image pointed at the local build); yields the leading
    operator pod, once both replicas are Ready (the standby answers its own probes).
    Afterwards the Deployment goes (its pods would act on later tests' policies); the
    namespaces, RBAC and fence stay, as other lanes install them too."""
    cluster = real_nodes_available
    image = cluster.images.nodesysctl
    assert image.ref.startswith(NODESYSCTL_NAME + ":")
    overlay = registryless_overlay(tmp_path_factory.mktemp("overlay"), image.ref)
    cluster.kubectl("apply", "-k", str(overlay), "--server-side", "--force-conflicts",
                    "--field-manager=realnode-lane")  # fmt: skip
    api = cluster.api

    def ready_pod() -> dict[str, Any] | None:
        pods = [p for p in operator_pods(api) if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != REPLICAS or not all(pod_ready(p) for p in pods):
            return None
        return leader_of(api, pods)

    try:
        pod = wait_for(ready_pod, timeout=180, what="both operator pods Ready, one leading")
        yield pod
    finally:
        print("\n----- operator log -----\n" + operator_log(cluster)[-20000:])
        try:
            client.AppsV1Api(api).delete_namespaced_deployment(OPERATOR, OPERATOR_NAMESPACE)
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for(lambda: not operator_pods(api), timeout=60, what="the operator's pod gone")


def operator_log(cluster: DevCluster) -> str:
    """Both replicas' logs, each line prefixed with its pod (the leader's and the standby's)."""
    selector = f"app.kubernetes.io/name={OPERATOR}"
    proc = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, "-l", selector, "--prefix",
                           "--tail=-1", check=False)  # fmt: skip
    return str(proc.stdout or proc.stderr)


def agent_pods(api: Any, policy: str) -> list[dict[str, Any]]:
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod,
        JOB_NAMESPACE,
        label_selector=f"nodesysctl.io/policy={policy}",
    )
    return list(pods["items"])
