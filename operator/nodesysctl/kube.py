"""Kubernetes I/O: thin, blocking calls over the official client.

Every function here blocks; the Kopf handlers call them through `asyncio.to_thread`, never
directly from the event loop. Bodies go in and come out as plain dicts (`_preload_content=False`
+ `json.loads`), which keeps the pure core free of client model classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    BatchV1Api,
    CoreV1Api,
    CoreV1Event,
    CustomObjectsApi,
    V1Job,
)
from kubernetes.client.exceptions import ApiException

from nodesysctl import GROUP, KIND, PLURAL, VERSION
from nodesysctl.planning import NodeFacts, format_time

logger = logging.getLogger(__name__)

FIELD_MANAGER = "nodesysctl"
# The generated client defaults a dict body to a JSON *patch*; we always send merge patches.
MERGE_PATCH = "application/merge-patch+json"
EVENT_NAMESPACE = "default"  # where Events about cluster-scoped objects go (as kubelet does)
REPORTING_COMPONENT = "nodesysctl-operator"


def new_api_client() -> ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Kube:
    """The handful of API calls the operator makes, each with the errors it tolerates."""

    def __init__(self, api: ApiClient) -> None:
        self.core = CoreV1Api(api)
        self.batch = BatchV1Api(api)
        self.apps = AppsV1Api(api)
        self.custom = CustomObjectsApi(api)

    # --- agent Jobs -----------------------------------------------------------------------

    def create_job(self, body: Mapping[str, Any]) -> bool:
        """Create a Job; False if one by that name exists already (idempotent retries)."""
        namespace = body["metadata"]["namespace"]
        try:
            self.batch.create_namespaced_job(
                namespace,
                V1Job.model_validate(dict(body)),
                field_manager=FIELD_MANAGER,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _preload_content=False
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def delete_policy_jobs(self, namespace: str, label_selector: str) -> int:
        jobs = _json(
            self.batch.list_namespaced_job(
                namespace, label_selector=label_selector, _preload_content=False
            )
        )
        names = [item["metadata"]["name"] for item in jobs.get("items", [])]
        for name in names:
            self.delete_job(namespace, name)
        return len(names)

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """Pods of one Job (used when the watch has not delivered them yet)."""
        pods = _json(
            self.core.list_namespaced_pod(
                namespace,
                label_selector=f"batch.kubernetes.io/job-name={job}",
                _preload_content=False,
            )
        )
        return list(pods.get("items", []))

    # --- Nodes ----------------------------------------------------------------------------

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        try:
            self.core.patch_node(
                name,
                dict(patch),
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:  # the node left meanwhile: nothing to record on it
                raise

    def clear_node_annotation(self, key: str, nodes: Iterable[str]) -> None:
        for name in nodes:
            self.patch_node(name, {"metadata": {"annotations": {key: None}}})

    # --- Policies -------------------------------------------------------------------------

    def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        try:
            self.custom.patch_cluster_custom_object_status(
                GROUP,
                VERSION,
                PLURAL,
                name,
                {"status": dict(status)},
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    def list_policies(self) -> list[dict[str, Any]]:
        return list(
            _json(
                self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _preload_content=False
                )
            )["items"]
        )

    def list_node_facts(self, page: int = 500) -> list[NodeFacts]:
        """Every Node's facts, listed in pages and reduced page by page (no full bodies kept)."""
        facts: list[NodeFacts] = []
        token: str | None = None
        while True:
            chunk = _json(self.core.list_node(limit=page, _continue=token, _preload_content=False))
            facts += [NodeFacts.from_body(item) for item in chunk.get("items", [])]
            token = (chunk.get("metadata") or {}).get("continue")
            if not token:
                return facts

    # --- Workloads ------------------------------------------------------------------------

    def pods_on_node(self, node: str) -> list[dict[str, Any]]:
        pods = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False
            )
        )
        return list(pods.get("items", []))

    def list_workloads(
        self, kind: str, namespaces: Iterable[str], label_selector: str
    ) -> list[dict[str, Any]]:
        lister_all, lister_ns = {
            "Deployment": (
                self.apps.list_deployment_for_all_namespaces,
                self.apps.list_namespaced_deployment,
            ),
            "StatefulSet": (
                self.apps.list_stateful_set_for_all_namespaces,
                self.apps.list_namespaced_stateful_set,
            ),
            "DaemonSet": (
                self.apps.list_daemon_set_for_all_namespaces,
                self.apps.list_namespaced_daemon_set,
            ),
        }[kind]
        wanted = list(namespaces)
        if not wanted:
            return list(
                _json(lister_all(label_selector=label_selector, _preload_content=False))["items"]
            )
        items: list[dict[str, Any]] = []
        for namespace in wanted:
            items += _json(
                lister_ns(namespace, label_selector=label_selector, _preload_content=False)
            )["items"]
        return items

    def patch_workload(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        patcher = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "StatefulSet": self.apps.patch_namespaced_stateful_set,
            "DaemonSet": self.apps.patch_namespaced_daemon_set,
        }[kind]
        patcher(
            name,
            namespace,
            dict(patch),
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )

    # --- Events ---------------------------------------------------------------------------

    def post_event(
        self,
        involved: Mapping[str, Any],
        *,
        warning: bool,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about any object; failures are logged, never fatal."""
        now = datetime.now(UTC)
        namespace = involved.get("namespace") or EVENT_NAMESPACE
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": REPORTING_COMPONENT,
            "firstTimestamp": format_time(now),
            "lastTimestamp": format_time(now),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(
                namespace, CoreV1Event.model_validate(body), _preload_content=False
            )
        except ApiException as exc:
            logger.warning("could not post event %s on %s: %s", reason, involved, exc.reason)


def policy_ref(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid}


def node_ref(name: str) -> dict[str, Any]:
    # kubectl describe node finds events by involvedObject kind/name/uid; the uid is the
    # node name for kubelet's own events, so use the same convention.
    return {"apiVersion": "v1", "kind": "Node", "name": name, "uid": name}


def workload_ref(kind: str, namespace: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "namespace": namespace, "name": name, "uid": uid}
