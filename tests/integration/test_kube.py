"""`nodesysctl.kube.Kube` against the real API server: every call the operator makes, by REST
path, with the errors each one tolerates and the ones it must raise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from devcluster.pytest_plugin import NodeFactory
from nodesysctl import GROUP, KIND, VERSION
from nodesysctl.kube import FIELD_MANAGER, Kube, KubeError, node_ref, policy_ref, workload_ref
from nodesysctl.nodewatch import list_node_facts
from nodesysctl.refusals import Refusal
from nodesysctl.restarts import EvictionResult

pytestmark = pytest.mark.integration


@pytest.fixture
def kube(api_client: Any) -> Kube:
    return Kube(api_client)


def job_body(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "suspend": True,  # never runs: this test is about the API calls only
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "example.invalid/none:1"}],
                }
            },
        },
    }


def test_jobs_create_idempotently_list_and_delete(kube: Kube, test_namespace: str) -> None:
    labels = {"nodesysctl.io/test": test_namespace}
    assert kube.create_job(job_body(test_namespace, "a", labels)) is True
    assert kube.create_job(job_body(test_namespace, "a", labels)) is False  # 409: exists
    assert kube.create_job(job_body(test_namespace, "b", labels)) is True
    batch: Any = client.BatchV1Api(kube.rest.api)
    created = json.loads(
        batch.read_namespaced_job("a", test_namespace, _preload_content=False).data
    )
    managers = {entry["manager"] for entry in created["metadata"]["managedFields"]}
    assert FIELD_MANAGER in managers

    kube.delete_job(test_namespace, "missing")  # 404 is fine
    assert kube.delete_policy_jobs(test_namespace, "nodesysctl.io/test=" + test_namespace) == 2
    remaining = json.loads(batch.list_namespaced_job(test_namespace, _preload_content=False).data)
    assert all(item["metadata"].get("deletionTimestamp") for item in remaining["items"])
    assert kube.job_pods(test_namespace, "a") == []


def test_get_job_reads_the_job_that_holds_a_name_or_none(kube: Kube, test_namespace: str) -> None:
    """What the pass reads after 409 AlreadyExists, to see whose Job holds the name."""
    assert kube.create_job(job_body(test_namespace, "held", {"app": "someone-else"})) is True
    held = kube.get_job(test_namespace, "held")
    assert held is not None
    assert held["metadata"]["labels"] == {"app": "someone-else"}
    assert held["metadata"]["uid"]
    assert kube.get_job(test_namespace, "missing") is None  # 404


def test_an_invalid_body_raises_with_the_api_servers_status(
    kube: Kube, test_namespace: str
) -> None:
    body = job_body(test_namespace, "Not_A_Name", {})
    with pytest.raises(ApiException) as raised:
        kube.create_job(body)
    assert raised.value.status == 422
    assert "Not_A_Name" in str(raised.value.body)


def test_refusals_carry_the_status_bodys_reason_and_message(
    kube: Kube, test_namespace: str
) -> None:
    """What `nodesysctl.refusals.classify` is given, from the API server itself: a 422 is the
    request's fault, RBAC's 403 is not, and no answer at all is status 0."""
    with pytest.raises(KubeError) as invalid:
        kube.create_job(job_body(test_namespace, "Not_A_Name", {}))
    assert (invalid.value.status, invalid.value.reason) == (422, "Invalid")
    assert invalid.value.message.startswith('Job.batch "Not_A_Name" is invalid: metadata.name')
    assert invalid.value.refusal.refusal == Refusal.INVALID

    config = kube.rest.api.configuration
    nobody = Kube(ApiClient(config, header_name="Impersonate-User", header_value="nobody"))
    with pytest.raises(KubeError) as forbidden:
        nobody.create_job(job_body(test_namespace, "a", {}))
    assert (forbidden.value.status, forbidden.value.reason) == (403, "Forbidden")
    assert 'User "nobody" cannot create resource "jobs"' in forbidden.value.message
    assert forbidden.value.refusal.refusal == Refusal.TRANSIENT

    nowhere = type(config)()
    nowhere.host, nowhere.verify_ssl, nowhere.retries = "https://127.0.0.1:9", False, 0
    with pytest.raises(KubeError) as unanswered:
        Kube(ApiClient(nowhere)).list_policies()
    assert unanswered.value.status == 0
    assert unanswered.value.refusal.condition_reason == "APIUnreachable"


def test_failed_create_events_of_jobs_are_listed(kube: Kube, test_namespace: str) -> None:
    event = {
        "metadata": {"name": "j.1", "namespace": test_namespace},
        "involvedObject": {"kind": "Job", "name": "j", "namespace": test_namespace},
        "reason": "FailedCreate",
        "message": 'Error creating: pods "j-x" is forbidden: exceeded quota',
        "type": "Warning",
    }
    core: Any = client.CoreV1Api(kube.rest.api)
    core.create_namespaced_event(test_namespace, event)
    other = {**event, "metadata": {"name": "j.2"}, "reason": "SuccessfulCreate"}
    core.create_namespaced_event(test_namespace, other)
    listed = kube.job_events(test_namespace, "FailedCreate")
    assert [e["metadata"]["name"] for e in listed] == ["j.1"]


def test_nodes_list_in_pages_and_patch_by_merge(kube: Kube, node_factory: NodeFactory) -> None:
    made = node_factory.many(5)
    names = {node.name for node in made}
    pages = list(kube.list_node_pages(page=2))
    assert len(pages) >= 3
    assert all(len(page["items"]) <= 2 for page in pages)
    assert len({page["metadata"]["resourceVersion"] for page in pages}) == 1  # one snapshot
    listed = {facts.name: facts for facts in list_node_facts(kube, page=2)[0]}
    assert names <= set(listed)
    first = made[0].name
    assert listed[first].labels == {**node_factory.selector, **listed[first].labels}
    assert listed[first].boot_id == made[0].boot_id

    kube.patch_node(first, {"metadata": {"annotations": {"nodesysctl.io/test": "x"}}})
    core: Any = client.CoreV1Api(kube.rest.api)
    assert core.read_node(first).metadata.annotations["nodesysctl.io/test"] == "x"
    kube.clear_node_annotation("nodesysctl.io/test", [first, "no-such-node"])  # 404 is fine
    assert "nodesysctl.io/test" not in (core.read_node(first).metadata.annotations or {})


def test_policy_status_patch_and_list(
    kube: Kube, devcluster: DevCluster, crds_installed: list[str], test_id: str
) -> None:
    custom: Any = client.CustomObjectsApi(kube.rest.api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": test_id},
        "spec": {"remediation": {"mode": "Audit"}, "nodeSelector": {"matchLabels": {"x": "y"}}},
    }
    custom.create_cluster_custom_object(GROUP, VERSION, "nodesysctlpolicies", body)
    try:
        kube.patch_policy_status(test_id, {"observedGeneration": 1, "nodes": 3})
        listed = {p["metadata"]["name"]: p for p in kube.list_policies()}
        assert listed[test_id]["status"]["nodes"] == 3
        kube.patch_policy_status("no-such-policy", {"nodes": 1})  # deleted meanwhile: fine
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "nodesysctlpolicies", test_id)


def test_workloads_list_by_namespace_and_selector_and_patch(
    kube: Kube, test_namespace: str
) -> None:
    apps: Any = client.AppsV1Api(kube.rest.api)
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
            },
        },
    }
    apps.create_namespaced_deployment(test_namespace, deployment)
    read_back = kube.get_workload("Deployment", test_namespace, "web")
    assert read_back is not None
    assert read_back["metadata"]["labels"] == labels
    assert kube.get_workload("Deployment", test_namespace, "other") is None
    assert kube.get_workload("DaemonSet", test_namespace, "web") is None

    stamp = {"spec": {"template": {"metadata": {"annotations": {"k": "v"}}}}}
    kube.patch_workload("Deployment", test_namespace, "web", stamp)
    read = apps.read_namespaced_deployment("web", test_namespace)
    assert read.spec.template.metadata.annotations == {"k": "v"}


def bare_pod(name: str, *, host_network: bool, labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "hostNetwork": host_network,
            "containers": [{"name": "c", "image": "example.invalid/none:1"}],
        },
    }


def test_pods_list_in_pages_host_network_only_on_the_server(
    kube: Kube, test_namespace: str
) -> None:
    core: Any = client.CoreV1Api(kube.rest.api)
    for index in range(3):
        core.create_namespaced_pod(test_namespace, bare_pod(f"host-{index}", host_network=True))
    core.create_namespaced_pod(test_namespace, bare_pod("pod-network", host_network=False))
    host = [p["metadata"]["name"] for p in kube.list_pods(host_network_only=True, page=2)
            if p["metadata"]["namespace"] == test_namespace]  # fmt: skip
    assert sorted(host) == ["host-0", "host-1", "host-2"]
    every = [p["metadata"]["name"] for p in kube.list_pods(host_network_only=False, page=2)
             if p["metadata"]["namespace"] == test_namespace]  # fmt: skip
    assert "pod-network" in every
    assert isinstance(kube.list_replica_sets(page=1), list)


def test_an_eviction_respects_a_pdb_and_the_pods_uid(kube: Kube, test_namespace: str) -> None:
    core: Any = client.CoreV1Api(kube.rest.api)
    guarded = core.create_namespaced_pod(
        test_namespace, bare_pod("guarded", host_network=True, labels={"app": "guarded"})
    )
    free = core.create_namespaced_pod(test_namespace, bare_pod("free", host_network=True))
    # A Pending pod is evicted whatever its budget says: the guarded one runs, and is ready.
    ready = [{"type": "Ready", "status": "True"}]
    core.patch_namespaced_pod_status(
        "guarded", test_namespace, {"status": {"phase": "Running", "conditions": ready}}
    )
    policy: Any = client.PolicyV1Api(kube.rest.api)
    policy.create_namespaced_pod_disruption_budget(
        test_namespace,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "guard"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
        },
    )
    result, why = kube.evict_pod(test_namespace, "guarded", guarded.metadata.uid)
    assert result == EvictionResult.BLOCKED
    assert why  # the API server's words: the budget, or not processed yet
    assert kube.evict_pod(test_namespace, "free", "not-its-uid")[0] == EvictionResult.GONE
    assert kube.evict_pod(test_namespace, "free", free.metadata.uid) == (EvictionResult.EVICTED, "")
    assert kube.evict_pod(test_namespace, "free", free.metadata.uid)[0] == EvictionResult.GONE


def test_events_are_posted_about_nodes_policies_and_workloads(
    kube: Kube, test_namespace: str, test_id: str
) -> None:
    kube.post_event(policy_ref(test_id, "uid-1"), warning=True, reason="TestReason", message="m")
    kube.post_event(node_ref(test_id), warning=False, reason="TestNode", message="n" * 5000)
    kube.post_event(
        workload_ref("Deployment", test_namespace, "web", "uid-2"),
        warning=False,
        reason="TestWorkload",
        message="w",
    )
    core: Any = client.CoreV1Api(kube.rest.api)
    default = json.loads(core.list_namespaced_event("default", _preload_content=False).data)
    mine = {e["reason"]: e for e in default["items"] if e["involvedObject"]["name"] == test_id}
    assert mine["TestReason"]["type"] == "Warning"
    assert len(mine["TestNode"]["message"]) == 1024
    local = json.loads(core.list_namespaced_event(test_namespace, _preload_content=False).data)
    assert [e["reason"] for e in local["items"]] == ["TestWorkload"]
