"""Kubernetes I/O: thin, blocking calls over the official client.

Every function here blocks; the Kopf handlers call them through `asyncio.to_thread`, never
directly from the event loop. Bodies go in and come out as plain dicts, which keeps the pure
core free of client model classes.

Requests go through the client's `ApiClient` (kubeconfig, in-cluster credentials, TLS, auth
plugins) by REST path, not through the generated `CoreV1Api`-style classes: importing those
builds a few hundred pydantic models the operator never uses — 27 MiB of its resident memory
(docs/performance.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kubernetes
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from nodesysctl import GROUP, KIND, PLURAL, VERSION
from nodesysctl.labels import LABEL_JOB_NAME
from nodesysctl.planning import format_time
from nodesysctl.refusals import ApiRefusal
from nodesysctl.restarts import EvictionResult

logger = logging.getLogger(__name__)

FIELD_MANAGER = "nodesysctl"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
EVENT_NAMESPACE = "default"  # where Events about cluster-scoped objects go (as kubelet does)
REPORTING_COMPONENT = "nodesysctl-operator"
RESTART_LIST_PAGE = 500  # bodies per page of a cluster-wide pod or ReplicaSet list
HOST_NETWORK_PODS = "spec.hostNetwork=true"
WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets",
                    "DaemonSet": "daemonsets"}  # fmt: skip


def new_api_client() -> ApiClient:
    """In-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return ApiClient()


class WatchExpiredError(Exception):
    """The watch's resourceVersion is too old (HTTP 410 Gone): list again, then watch."""


class KubeError(ApiException):
    """Every failed API call, mapped here and nowhere else: `status` is the HTTP status (0 when
    the API server did not answer), `reason` and `message` come from its Status body
    (`Forbidden`, `jobs.batch "x" is forbidden: ...`). `refusal` is the same as plain data, for
    the pure core to judge (`nodesysctl.refusals.classify`: whose fault it is).

    A subclass of the client's ApiException, so code that expects that still works."""

    def __init__(self, status: int, reason: str, message: str, *, body: str | None = None):
        super().__init__(status=status, reason=reason, body=body)
        self.message = message

    @classmethod
    def from_api_exception(cls, exc: ApiException) -> KubeError:
        """From the client's exception (its `body` is the Status JSON, if the server sent one)."""
        status = int(exc.status or 0)
        reason, message = str(exc.reason or ""), ""
        try:
            decoded = json.loads(exc.body or "")
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and decoded.get("kind") == "Status":
            reason = str(decoded.get("reason") or reason)
            message = str(decoded.get("message") or "")
        error = cls(status, reason, message or str(exc.body or exc.reason or ""), body=exc.body)
        error.headers = exc.headers
        return error

    @classmethod
    def unreachable(cls, exc: BaseException) -> KubeError:
        return cls(0, "Unreachable", f"{type(exc).__name__}: {exc}")

    @property
    def refusal(self) -> ApiRefusal:
        return ApiRefusal(int(self.status or 0), str(self.reason or ""), self.message)

    def __str__(self) -> str:
        return self.refusal.describe()  # one line, not the client's headers and body


class Rest:
    """JSON over the API server's REST paths, with the client's configuration and auth.

    `timeout`: the seconds each request may take in all (connect, send, answer), then a
    KubeError; None waits as long as the server takes (leader election sets one)."""

    def __init__(self, api: ApiClient, timeout: float | None = None) -> None:
        self.api = api
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON response; KubeError for any non-2xx answer, or for none at all."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            response = self.api.call_api(
                *self._serialize(method, path, query, headers, body), _request_timeout=self.timeout
            )
            response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:  # the client's own, e.g. status 0 for a TLS failure
            raise KubeError.from_api_exception(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError.unreachable(exc) from exc
        if not 200 <= response.status <= 299:
            raise KubeError.from_api_exception(ApiException(http_resp=response))
        return json.loads(response.data) if response.data else None

    def _serialize(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int | None] | None,
        headers: dict[str, str],
        body: Any,
    ) -> tuple[str, str, dict[str, str], Any, Any]:
        """Method, URL, headers (with the configured credentials), body and form parameters,
        as the client's `call_api` takes them."""
        params = [(key, value) for key, value in (query or {}).items() if value is not None]
        return self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )

    def get(self, path: str, **query: str | int | None) -> Any:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, query={"fieldManager": FIELD_MANAGER}, body=dict(body))

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, query={"fieldManager": FIELD_MANAGER},
                            body=dict(patch), content_type=MERGE_PATCH)  # fmt: skip

    def delete(self, path: str, **query: str | int | None) -> Any:
        return self.request("DELETE", path, query=query)

    def stream_lines(
        self, path: str, *, query: Mapping[str, str | int | None], read_timeout: float
    ) -> Iterator[bytes]:
        """The non-empty lines of a streamed GET (a watch), as they arrive."""
        request = self._serialize("GET", path, query, {"Accept": "application/json"}, None)
        response = self.api.call_api(*request, _request_timeout=(10, read_timeout))
        raw = response.response  # the urllib3 response, not read yet
        try:
            if not 200 <= response.status <= 299:
                response.read()  # type: ignore[no-untyped-call]
                if response.status == 410:
                    raise WatchExpiredError((response.data or b"").decode(errors="replace"))
                raise KubeError.from_api_exception(ApiException(http_resp=response))
            for line in raw:
                if line.strip():
                    yield line
        finally:
            raw.close()  # a watch left early has unread data: never hand it back to the pool


def _name(value: str) -> str:
    return quote(value, safe="")


def _policy_path(name: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return f"{path}/{_name(name)}" if name else path


class Kube:
    """The handful of API calls the operator makes, each with the errors it tolerates."""

    def __init__(self, api: ApiClient) -> None:
        self.rest = Rest(api)

    def with_own_pool(self) -> Kube:
        """The same credentials over separate connections (for a long-running watch)."""
        return Kube(ApiClient(self.rest.api.configuration))

    # --- agent Jobs -----------------------------------------------------------------------

    def create_job(self, body: Mapping[str, Any]) -> bool:
        """Create a Job; False if one by that name exists already (idempotent retries; whose
        it is, the caller checks with `get_job`)."""
        namespace = body["metadata"]["namespace"]
        try:
            self.rest.create(f"/apis/batch/v1/namespaces/{_name(namespace)}/jobs", body)
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Job's body; None if there is none by that name (404)."""
        try:
            job: dict[str, Any] = self.rest.get(
                f"/apis/batch/v1/namespaces/{_name(namespace)}/jobs/{_name(name)}"
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return job

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job in the foreground: it stays (and the Jobs index keeps showing it) until
        its pod is gone, so no other agent Job starts on the node while that agent may run."""
        try:
            self.rest.delete(
                f"/apis/batch/v1/namespaces/{_name(namespace)}/jobs/{_name(name)}",
                propagationPolicy="Foreground",
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    def delete_policy_jobs(self, namespace: str, label_selector: str) -> int:
        jobs = self.rest.get(
            f"/apis/batch/v1/namespaces/{_name(namespace)}/jobs", labelSelector=label_selector
        )
        names = [item["metadata"]["name"] for item in jobs.get("items", [])]
        for name in names:
            self.delete_job(namespace, name)
        return len(names)

    def job_events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        """The Events about Jobs in `namespace` with this reason (the Job controller's
        FailedCreate: the only word it gives when it cannot create a Job's pod)."""
        events = self.rest.get(
            f"/api/v1/namespaces/{_name(namespace)}/events",
            fieldSelector=f"involvedObject.kind=Job,reason={reason}",
        )
        return list(events.get("items", []))

    def job_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """Pods of one Job (used when the watch has not delivered them yet)."""
        pods = self.rest.get(
            f"/api/v1/namespaces/{_name(namespace)}/pods",
            labelSelector=f"{LABEL_JOB_NAME}={job}",
        )
        return list(pods.get("items", []))

    # --- Nodes ----------------------------------------------------------------------------

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        try:
            self.rest.merge_patch(f"/api/v1/nodes/{_name(name)}", patch)
        except KubeError as exc:
            if exc.status != 404:  # the node left meanwhile: nothing to record on it
                raise

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            node: dict[str, Any] = self.rest.get(f"/api/v1/nodes/{_name(name)}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return node

    def json_patch_node(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None:
        """A JSON patch (RFC 6902) of a Node: how its taints are changed, with a `test` of its
        resourceVersion first (`nodesysctl.node_taints`); errors are the caller's to judge."""
        self.rest.request("PATCH", f"/api/v1/nodes/{_name(name)}",
                          query={"fieldManager": FIELD_MANAGER},
                          body=[dict(op) for op in patch], content_type=JSON_PATCH)  # fmt: skip

    def clear_node_annotation(self, key: str, nodes: Iterable[str]) -> None:
        for name in nodes:
            self.patch_node(name, {"metadata": {"annotations": {key: None}}})

    # --- Policies -------------------------------------------------------------------------

    def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        try:
            self.rest.merge_patch(f"{_policy_path(name)}/status", {"status": dict(status)})
        except KubeError as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    def list_policies(self) -> list[dict[str, Any]]:
        return list(self.rest.get(_policy_path())["items"])

    def list_node_pages(self, page: int = 500) -> Iterator[dict[str, Any]]:
        """The Node list, one raw page (a NodeList of at most `page` Nodes) at a time, lazily:
        the caller reduces each page before the next one is fetched, so only one page of parsed
        bodies is alive at once. Every page of a paged list is served from the first page's
        snapshot and carries its resourceVersion (to watch from)."""
        token: str | None = None
        while True:
            chunk = self.rest.get("/api/v1/nodes", limit=page, **{"continue": token})
            token = (chunk.get("metadata") or {}).get("continue")
            yield chunk
            del chunk  # not kept alive while the next page is fetched and parsed
            if not token:
                return

    def watch_nodes(self, version: str, timeout_seconds: int) -> Iterator[tuple[str, Any]]:
        """(type, object) per Node watch event after `version`, bookmarks included, until the
        API server ends the watch (after about `timeout_seconds`). WatchExpiredError when `version`
        is too old (HTTP 410): the caller lists again."""
        lines = self.rest.stream_lines(
            "/api/v1/nodes",
            query={
                "watch": "true",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_seconds,
            },
            # A silent connection (a half-dead API server) is noticed within a minute of the
            # server's own deadline; bookmarks keep a healthy one from being silent that long.
            read_timeout=timeout_seconds + 60,
        )
        for line in lines:
            event = json.loads(line)
            kind, obj = event.get("type", ""), event.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code")
                if code == 410:
                    raise WatchExpiredError(str(obj.get("message", "")))
                raise KubeError(int(code or 0), str(obj.get("reason")), str(obj.get("message")))
            yield kind, obj

    # --- Workloads ------------------------------------------------------------------------

    def _list_pages(self, path: str, page: int, **query: str | None) -> list[dict[str, Any]]:
        """Every item of a paged cluster-wide list (`limit`/`continue`: one consistent snapshot,
        at most `page` bodies per response)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            chunk = self.rest.get(path, limit=page, **{"continue": token}, **query)
            items += chunk.get("items") or []
            token = (chunk.get("metadata") or {}).get("continue")
            if not token:
                return items

    def list_pods(
        self, *, host_network_only: bool, page: int = RESTART_LIST_PAGE
    ) -> list[dict[str, Any]]:
        """The cluster's pods, in pages; only `hostNetwork: true` ones when asked, filtered on
        the server (`fieldSelector=spec.hostNetwork=true`, Kubernetes 1.36). An API server
        without that field selector (400) is asked for every pod and the list filtered here."""
        if not host_network_only:
            return self._list_pages("/api/v1/pods", page)
        try:
            pods = self._list_pages("/api/v1/pods", page, fieldSelector=HOST_NETWORK_PODS)
        except KubeError as exc:
            if exc.status != 400:
                raise
            logger.info("no spec.hostNetwork field selector for pods: filtering the full list")
            pods = self._list_pages("/api/v1/pods", page)
        return [pod for pod in pods if (pod.get("spec") or {}).get("hostNetwork")]

    def list_replica_sets(self, page: int = RESTART_LIST_PAGE) -> list[dict[str, Any]]:
        """Every ReplicaSet, in pages (to find the Deployment that owns a pod's ReplicaSet)."""
        return self._list_pages("/apis/apps/v1/replicasets", page)

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One Deployment, StatefulSet or DaemonSet; None if it is gone (404)."""
        plural = WORKLOAD_PLURALS[kind]
        try:
            body: dict[str, Any] = self.rest.get(
                f"/apis/apps/v1/namespaces/{_name(namespace)}/{plural}/{_name(name)}"
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return body

    def evict_pod(self, namespace: str, name: str, uid: str) -> tuple[EvictionResult, str]:
        """Evict one pod through the Eviction API (policy/v1), so PodDisruptionBudgets apply.
        The uid precondition keeps a replacement of the same name (a StatefulSet's, a static
        pod's) from being evicted in its place. (Evicted | Blocked with the API's message |
        Gone when it no longer exists or was replaced.)"""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}},
        }
        try:
            self.rest.request(
                "POST",
                f"/api/v1/namespaces/{_name(namespace)}/pods/{_name(name)}/eviction",
                body=body,
            )
        except KubeError as exc:
            if exc.status == 429:  # a PodDisruptionBudget does not allow it now
                return EvictionResult.BLOCKED, exc.message
            if exc.status in (404, 409):  # gone, or a new pod by that name
                return EvictionResult.GONE, exc.message
            raise
        return EvictionResult.EVICTED, ""

    def patch_workload(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None:
        plural = WORKLOAD_PLURALS[kind]
        self.rest.merge_patch(
            f"/apis/apps/v1/namespaces/{_name(namespace)}/{plural}/{_name(name)}", patch
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
            self.rest.request("POST", f"/api/v1/namespaces/{_name(namespace)}/events", body=body)
        except KubeError as exc:
            logger.warning("could not post event %s on %s: %s", reason, involved, exc)


def policy_ref(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": uid}


def node_ref(name: str) -> dict[str, Any]:
    # kubectl describe node finds events by involvedObject kind/name/uid; the uid is the
    # node name for kubelet's own events, so use the same convention.
    return {"apiVersion": "v1", "kind": "Node", "name": name, "uid": name}


def workload_ref(kind: str, namespace: str, name: str, uid: str) -> dict[str, Any]:
    api_version = "v1" if kind == "Pod" else "apps/v1"
    return {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name,
            "uid": uid}  # fmt: skip
