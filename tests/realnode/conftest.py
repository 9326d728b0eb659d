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
from tests.kube_json import read_json

OPERATOR = OPERATOR_DEPLOYMENT


def operator_pods(api: Any) -> list[dict[str, Any]]:
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod,
        OPERATOR_NAMESPACE,
        label_selector=f"app.kubernetes.io/name={OPERATOR}",
    )
    return list(pods["items"])


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def installed(
    real_nodes_available: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The default overlay applied (image pointed at the local build); yields the operator's
    Ready pod. Afterwards the Deployment goes (its pod would act on later tests' policies);
    the namespaces, RBAC and fence stay, as other lanes install them too."""
    cluster = real_nodes_available
    image = cluster.images.nodesysctl
    assert image.ref.startswith(NODESYSCTL_NAME + ":")
    overlay = registryless_overlay(tmp_path_factory.mktemp("overlay"), image.ref)
    cluster.kubectl("apply", "-k", str(overlay), "--server-side", "--force-conflicts",
                    "--field-manager=realnode-lane")  # fmt: skip
    api = cluster.api

    def ready_pod() -> dict[str, Any] | None:
        pods = [p for p in operator_pods(api) if not p["metadata"].get("deletionTimestamp")]
        return pods[0] if len(pods) == 1 and pod_ready(pods[0]) else None

    try:
        pod = wait_for(ready_pod, timeout=180, what="the operator's pod Ready on a real node")
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
    proc = cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, f"deployment/{OPERATOR}",
                           "--tail=-1", check=False)  # fmt: skip
    return str(proc.stdout or proc.stderr)


def agent_pods(api: Any, policy: str) -> list[dict[str, Any]]:
    pods = read_json(
        client.CoreV1Api(api).list_namespaced_pod,
        JOB_NAMESPACE,
        label_selector=f"nodesysctl.io/policy={policy}",
    )
    return list(pods["items"])
