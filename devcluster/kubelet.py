"""A simulated kubelet for the dev cluster: one object serves every simulated node.

What it does, as a kubelet would (and what it does not):

* registers each node's Node object (capacity, allocatable, conditions, ``nodeInfo.bootID``,
  ``kubeletVersion``) and its Lease in ``kube-node-lease``, then keeps the node Ready by
  renewing the Lease only: the node lifecycle controller counts a renewed Lease as a heartbeat,
  so thousands of nodes cost one small write each per renew interval, never a status write;
* watches every pod and takes those bound to its nodes:

  - pods of agent Jobs (label ``app.kubernetes.io/name=nodesysctl-agent``) are RUN for real:
    each container's ``command + args`` (``python``/``python3`` replaced by this interpreter),
    inside the node's network namespace (``ip netns exec``), with hostPath mounts mapped into
    the node's host root, ``terminationMessagePath`` mapped to a per-pod file, and ``env``
    (including the downward API). The pod goes Running, then Succeeded/Failed with
    ``state.terminated`` {exitCode, reason Completed/Error, message = termination file};
    ``activeDeadlineSeconds`` kills a hung process (phase Failed, reason DeadlineExceeded);
  - any other pod becomes Running and Ready at once (no process), so rollouts complete;
  - a pod being deleted (``deletionTimestamp``) is killed and removed with grace 0.

* not simulated: images, probes, restarts (``restartPolicy`` is treated as Never for agent
  pods), resource enforcement, pod networking (non-hostNetwork pods get no pod IP), logs/exec
  through the API server. Every node's InternalIP is 127.0.0.1, so whatever the API server
  tries to reach on a "node" stays on this machine.

It uses the admin identity for all nodes (one process serves many nodes; the Node authorizer
would give each real kubelet only its own node).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

import nodesysctl
from nodesysctl.labels import AGENT_APP, LABEL_APP

from .binaries import KUBERNETES_VERSION
from .nodes import SimulatedNode

log = logging.getLogger(__name__)

AGENT_SELECTOR = (LABEL_APP, AGENT_APP)
NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_IP = "127.0.0.1"
TERMINATION_MESSAGE_LIMIT = 4096  # bytes per container, as the kubelet
MAX_LEASE_WRITES_PER_SECOND = 100
MAX_RENEW_PERIOD = 40.0
DEFAULT_AGENT_DEADLINE = 600.0  # seconds, when the pod sets no activeDeadlineSeconds
STATUS_RETRY_SECONDS = 120.0  # how long a pod status update is retried while the API is down
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")

Json = dict[str, Any]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _source_root() -> str:
    """The directory that holds the nodesysctl package (for PYTHONPATH of agent runs)."""
    return str(Path(nodesysctl.__file__).resolve().parent.parent)


class SimulatedKubelet:
    """Serves any number of :class:`SimulatedNode`; start() it, register() nodes, stop() it."""

    def __init__(
        self,
        api_factory: Callable[[], client.ApiClient],
        work_dir: Path,
        *,
        lease_duration_seconds: int = 40,
        renew_interval: float = 10.0,
        max_parallel_pods: int = 8,
    ) -> None:
        self._api_factory = api_factory
        # Typed as Any on purpose: bodies are plain dicts and pods are read as raw JSON.
        self._api: Any = api_factory()
        self.core: Any = client.CoreV1Api(self._api)
        self.coordination: Any = client.CoordinationV1Api(self._api)
        self.work_dir = work_dir
        self.pods_dir = work_dir / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.lease_duration_seconds = lease_duration_seconds
        self.renew_interval = renew_interval
        self.nodes: dict[str, SimulatedNode] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_parallel_pods, thread_name_prefix="sim-pod")
        self._started_pods: set[str] = set()  # pod UIDs we have taken on
        self._deleting_pods: set[str] = set()  # pod UIDs we have force-deleted
        self._processes: dict[str, subprocess.Popen[bytes]] = {}  # pod UID -> running container
        self._watch: Any = None
        self.errors: list[str] = []  # unexpected errors of the background threads

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for name, target in (
            ("sim-kubelet-leases", self._lease_loop),
            ("sim-kubelet-pods", self._pod_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        with self._lock:
            processes = list(self._processes.values())
        for proc in processes:
            _kill(proc)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=15)
        self._api.close()

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append(message)

    # ----------------------------------------------------------------- nodes and leases
    def node_body(self, node: SimulatedNode) -> Json:
        stamp = now()

        def condition(kind: str, status: str, reason: str, message: str) -> Json:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }

        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **node.labels,
        }
        resources = {"ephemeral-storage": "100Gi", **node.capacity}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": labels,
                "annotations": {
                    "nodesysctl.io/simulated": "true",
                    "nodesysctl.io/simulated-netns": node.netns or "",
                },
            },
            "spec": {"taints": node.taints} if node.taints else {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                    condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                    condition("Ready", "True", "KubeletReady", "simulated kubelet is ready"),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": node.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, node.name).hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, node.name)),
                    "bootID": node.boot_id,
                    "kernelVersion": platform.release(),
                    "osImage": "nodesysctl simulated node",
                    "containerRuntimeVersion": "simulated://0.1.0",
                    "kubeletVersion": KUBERNETES_VERSION,
                    "kubeProxyVersion": KUBERNETES_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    def register(self, node: SimulatedNode) -> None:
        """Create the Node object and its Lease; from now on the node's pods are served."""
        with self._lock:
            self.nodes[node.name] = node
        node.kubelet = self
        created = self.core.create_node(self.node_body(node))
        self._create_lease(node.name, created.metadata.uid)

    def unregister(self, name: str, *, delete_node: bool) -> None:
        with self._lock:
            node = self.nodes.pop(name, None)
        if node is not None:
            node.kubelet = None
        if delete_node:
            with contextlib.suppress(ApiException):  # 404: already gone
                self.core.delete_node(name)

    def _create_lease(self, name: str, node_uid: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                # Owned by the Node, so the garbage collector deletes it with the Node.
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.lease_duration_seconds,
                "renewTime": micro_now(),
            },
        }
        try:
            self.coordination.create_namespaced_lease(NODE_LEASE_NAMESPACE, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._renew_lease(name)

    def _renew_lease(self, name: str) -> None:
        self.coordination.patch_namespaced_lease(
            name,
            NODE_LEASE_NAMESPACE,
            {"spec": {"renewTime": micro_now(), "holderIdentity": name}},
            _content_type=MERGE,
        )

    def renew_period(self, nodes: int) -> float:
        """Seconds between two renewals of one node's Lease: ``renew_interval`` (10 s, as a
        kubelet), stretched for big clusters to at most MAX_LEASE_WRITES_PER_SECOND in all,
        but never past MAX_RENEW_PERIOD (the controller-manager's grace period is 60 s)."""
        return min(max(self.renew_interval, nodes / MAX_LEASE_WRITES_PER_SECOND), MAX_RENEW_PERIOD)

    def _lease_loop(self) -> None:
        """Renew every node's Lease once per period, the writes spread evenly over it."""
        while not self._stop.is_set():
            with self._lock:
                names = list(self.nodes)
            period = self.renew_period(len(names))
            started = time.monotonic()
            for index, name in enumerate(names):
                due = started + period * index / len(names)
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                if name in self.nodes:
                    self._renew_one(name)
            if self._stop.wait(max(0.0, started + period - time.monotonic())):
                return

    def _renew_one(self, name: str) -> None:
        try:
            self._renew_lease(name)
        except ApiException as exc:
            if exc.status == 404 and name in self.nodes:  # the Lease was deleted: recreate it
                with contextlib.suppress(ApiException):
                    self._create_lease(name, self.core.read_node(name).metadata.uid)
            elif exc.status != 404:
                self._error(f"renewing the lease of {name}: {exc.status} {exc.reason}")
        except Exception as exc:
            if not self._stop.is_set():
                self._error(f"renewing the lease of {name}: {exc!r}")

    def report_boot_id(self, node: SimulatedNode) -> None:
        """After a reboot: the new ``nodeInfo.bootID`` and a fresh Ready heartbeat."""
        stamp = now()
        self.core.patch_node_status(
            node.name,
            {
                "status": {
                    "nodeInfo": {"bootID": node.boot_id},
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "simulated kubelet is ready (rebooted)",
                            "lastHeartbeatTime": stamp,
                        }
                    ],
                }
            },
            _content_type=STRATEGIC,
        )

    def patch_labels(self, name: str, labels: Mapping[str, str | None]) -> None:
        self.core.patch_node(name, {"metadata": {"labels": dict(labels)}}, _content_type=MERGE)

    # ----------------------------------------------------------------- the pod watch
    def _pod_loop(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list_pods()
                resource_version = self._watch_pods(resource_version)
            except ApiException as exc:
                if exc.status == 410:  # too old: list again
                    resource_version = None
                    continue
                if not self._stop.is_set():
                    self._error(f"pod watch: {exc.status} {exc.reason}")
                    self._stop.wait(1.0)
            except Exception as exc:
                if not self._stop.is_set():
                    self._error(f"pod watch: {exc!r}")
                    resource_version = None
                    self._stop.wait(1.0)

    def _list_pods(self) -> str:
        resp = self.core.list_pod_for_all_namespaces(_preload_content=False)
        listing = json.loads(resp.data)
        for pod in listing.get("items", []):
            self._on_pod("ADDED", pod)
        return str(listing["metadata"]["resourceVersion"])

    def _watch_pods(self, resource_version: str) -> str:
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        stream: Iterator[Json] = self._watch.stream(
            self.core.list_pod_for_all_namespaces,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=60,
            deserialize=False,
        )
        for event in stream:
            if self._stop.is_set():
                break
            obj = event["object"]
            resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self._on_pod(event["type"], obj)
        return resource_version

    def _on_pod(self, kind: str, pod: Json) -> None:
        spec, meta = pod.get("spec", {}), pod["metadata"]
        node_name = spec.get("nodeName")
        uid = meta["uid"]
        if kind == "DELETED":
            with self._lock:
                self._started_pods.discard(uid)
                self._deleting_pods.discard(uid)
            return
        with self._lock:
            node = self.nodes.get(node_name) if node_name else None
            if node is None:
                return
            if meta.get("deletionTimestamp"):
                if uid in self._deleting_pods:
                    return
                self._deleting_pods.add(uid)
                proc = self._processes.get(uid)
            elif uid in self._started_pods:
                return
            else:
                self._started_pods.add(uid)
                proc = None
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished before we (re)started
                labels = meta.get("labels") or {}
                is_agent = labels.get(AGENT_SELECTOR[0]) == AGENT_SELECTOR[1]
                if is_agent:
                    self._pool.submit(self._guard, self._run_agent_pod, pod, node)
                else:
                    self._pool.submit(self._guard, self._start_plain_pod, pod)
                return
        # Graceful deletion: kill what runs, then remove the pod at once (grace 0).
        if proc is not None:
            _kill(proc)
        self._pool.submit(self._guard, self._force_delete, pod)

    def _guard(self, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except ApiException as exc:
            if exc.status not in (404, 409) and not self._stop.is_set():
                self._error(f"{func.__name__}: {exc.status} {exc.reason} {exc.body}")
        except Exception as exc:
            if not self._stop.is_set():
                log.exception("%s failed", func.__name__)
                self._error(f"{func.__name__}: {exc!r}")

    def _force_delete(self, pod: Json) -> None:
        meta = pod["metadata"]
        self.core.delete_namespaced_pod(
            meta["name"],
            meta["namespace"],
            grace_period_seconds=0,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
            ),
        )

    # ----------------------------------------------------------------- pod status
    def _patch_status(self, pod: Json, status: Json) -> None:
        """Report a pod's status; like a kubelet's status manager, keep trying while the API
        server is unavailable (a restart refuses connections for seconds). A deleted pod or any
        other refusal ends it."""
        meta = pod["metadata"]
        delay = 0.25
        give_up = time.monotonic() + STATUS_RETRY_SECONDS
        while True:
            try:
                self.core.patch_namespaced_pod_status(
                    meta["name"], meta["namespace"], {"status": status}, _content_type=STRATEGIC
                )
                return
            except ApiException as exc:
                if exc.status is not None and exc.status < 500 and exc.status != 429:
                    raise
                problem: Exception = exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = exc
            if self._stop.is_set() or time.monotonic() + delay > give_up:
                raise problem
            log.info("status of pod %s/%s not reported (%s); retrying in %.2f s",
                     meta["namespace"], meta["name"], problem, delay)  # fmt: skip
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    @staticmethod
    def _conditions(ready: bool, reason: str | None = None) -> list[Json]:
        stamp = now()
        out = []
        for kind, status in (
            ("PodReadyToStartContainers", True),
            ("Initialized", True),
            ("ContainersReady", ready),
            ("Ready", ready),
        ):
            cond: Json = {
                "type": kind,
                "status": "True" if status else "False",
                "lastTransitionTime": stamp,
            }
            if not status and reason:
                cond["reason"] = reason
            out.append(cond)
        return out

    @staticmethod
    def _ips(pod: Json) -> Json:
        ips: Json = {"hostIP": NODE_IP, "hostIPs": [{"ip": NODE_IP}]}
        if pod["spec"].get("hostNetwork"):
            ips.update(podIP=NODE_IP, podIPs=[{"ip": NODE_IP}])
        return ips

    def _running_status(self, pod: Json, started_at: str) -> Json:
        uid = pod["metadata"]["uid"]
        spec = pod["spec"]
        status: Json = {
            "phase": "Running",
            "startTime": started_at,
            **self._ips(pod),
            "conditions": self._conditions(True),
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": f"simulated://{c.get('image', '')}",
                    "containerID": f"simulated://{uid}/{c['name']}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": started_at}},
                }
                for c in spec.get("containers", [])
            ],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": f"simulated://{c.get('image', '')}",
                    "containerID": f"simulated://{uid}/{c['name']}",
                    "ready": True,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": started_at,
                            "finishedAt": started_at,
                        }
                    },
                }
                for c in spec["initContainers"]
            ]
        return status

    def _start_plain_pod(self, pod: Json) -> None:
        """Not an agent pod: Running and Ready, no process."""
        self._patch_status(pod, self._running_status(pod, now()))

    # ----------------------------------------------------------------- agent pods
    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """stdout+stderr of an agent pod's container (the API server cannot proxy logs to a
        simulated node). Empty if the pod never ran here."""
        pattern = f"{container or '*'}.log"
        texts = [
            path.read_text(errors="replace")
            for pod_dir in sorted(self.pods_dir.glob(f"{namespace}_{name}_*"))
            for path in sorted(pod_dir.glob(pattern))
        ]
        return "".join(texts)

    def _run_agent_pod(self, pod: Json, node: SimulatedNode) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        pod_dir = self.pods_dir / f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        started_at = now()
        self._patch_status(pod, self._running_status(pod, started_at))

        deadline_s = spec.get("activeDeadlineSeconds")
        deadline = time.monotonic() + (
            float(deadline_s) if deadline_s is not None else DEFAULT_AGENT_DEADLINE
        )
        results: list[Json] = []
        deadline_exceeded = False
        for container in spec.get("containers", []):
            if self._stop.is_set():
                return
            result = self._run_container(pod, container, node, pod_dir, deadline)
            results.append(result)
            deadline_exceeded = deadline_exceeded or result.pop("_deadline", False)
            if deadline_exceeded:
                break
        with self._lock:
            if uid in self._deleting_pods:
                return  # deleted while running: nothing left to report
        failed = deadline_exceeded or any(
            r["state"]["terminated"]["exitCode"] != 0 for r in results
        )
        status: Json = {
            "phase": "Failed" if failed else "Succeeded",
            "startTime": started_at,
            **self._ips(pod),
            "conditions": self._conditions(False, "PodCompleted"),
            "containerStatuses": results,
        }
        if deadline_exceeded:
            status["reason"] = "DeadlineExceeded"
            status["message"] = "Pod was active on the node longer than the specified deadline"
        self._patch_status(pod, status)

    def _run_container(
        self,
        pod: Json,
        container: Json,
        node: SimulatedNode,
        pod_dir: Path,
        deadline: float,
    ) -> Json:
        uid = pod["metadata"]["uid"]
        name = container["name"]
        termination_file = pod_dir / f"{name}.termination-log"
        termination_file.write_text("")
        log_file = pod_dir / f"{name}.log"
        started_at = now()
        base: Json = {
            "name": name,
            "image": container.get("image", ""),
            "imageID": f"simulated://{container.get('image', '')}",
            "containerID": f"simulated://{uid}/{name}",
            "ready": False,
            "started": False,
            "restartCount": 0,
        }

        def terminated(code: int, message: str, reason: str | None = None) -> Json:
            state = {
                "exitCode": code,
                "reason": reason or ("Completed" if code == 0 else "Error"),
                "startedAt": started_at,
                "finishedAt": now(),
                "containerID": base["containerID"],
            }
            if message:
                state["message"] = message
            return {**base, "state": {"terminated": state}}

        try:
            argv = self.container_argv(pod, container, node, termination_file)
            env = self.container_env(pod, container, node)
        except ValueError as exc:
            return terminated(128, str(exc), "StartError")

        log.info("pod %s/%s on %s runs: %s", pod["metadata"]["namespace"],
                 pod["metadata"]["name"], node.name, argv)  # fmt: skip
        with log_file.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=pod_dir,
                start_new_session=True,
            )
            with self._lock:
                self._processes[uid] = proc
            deadline_hit = False
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                deadline_hit = True
                _kill(proc)
            finally:
                with self._lock:
                    self._processes.pop(uid, None)
        returncode = proc.wait()
        code = returncode if returncode >= 0 else 128 - returncode  # killed by a signal
        message = termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            tail = log_file.read_bytes()[-2048:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-80:])
        result = terminated(code, message, "DeadlineExceeded" if deadline_hit else None)
        result["_deadline"] = deadline_hit
        return result

    # ----------------------------------------------------------------- container -> process
    @staticmethod
    def container_argv(
        pod: Json, container: Json, node: SimulatedNode, termination_file: Path
    ) -> list[str]:
        """The host command line for ``container`` on ``node`` (see the module docstring)."""
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not container.get("command"):
            raise ValueError("the simulated kubelet runs no images: the container needs `command`")
        if _PYTHON.match(os.path.basename(argv[0])):
            argv[0] = sys.executable

        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: list[tuple[str, str]] = []  # (mountPath in the container, path on this host)
        for mount in container.get("volumeMounts") or []:
            host_path = (volumes.get(mount["name"]) or {}).get("hostPath")
            if host_path:
                target = node.host_path(host_path["path"])
                if mount.get("subPath"):
                    target = target / mount["subPath"]
                mounts.append((mount["mountPath"].rstrip("/") or "/", str(target)))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        termination_path = container.get("terminationMessagePath") or "/dev/termination-log"

        def rewrite(value: str) -> str:
            if value == termination_path:
                return str(termination_file)
            for mount_path, target in mounts:
                if value == mount_path or value.startswith(mount_path + "/"):
                    return target + value[len(mount_path) :]
            if not node.netns and (value == "/proc" or value.startswith("/proc/")):
                return str(node.host_root) + value  # the node's fake /proc
            return value

        out = [argv[0]]
        for arg in argv[1:]:
            if arg.startswith("-") and "=" in arg:
                flag, _, value = arg.partition("=")
                out.append(f"{flag}={rewrite(value)}")
            else:
                out.append(rewrite(arg))
        if not node.netns:  # never let the agent read or write this host's own /proc
            for flag, path in (("--proc-sys", "proc/sys"), ("--proc-net", "proc/net")):
                if not any(a == flag or a.startswith(flag + "=") for a in out):
                    out += [flag, str(node.host_root / path)]
        if node.netns:
            out = ["ip", "netns", "exec", node.netns, *out]
        return out

    def container_env(self, pod: Json, container: Json, node: SimulatedNode) -> dict[str, str]:
        """The container's env (with the downward API and configMap/secret keys resolved) on
        top of a minimal host environment, so this interpreter finds its packages."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": "/root",
            "HOSTNAME": node.name if pod["spec"].get("hostNetwork") else pod["metadata"]["name"],
            "PYTHONPATH": os.pathsep.join(
                p for p in (_source_root(), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        namespace = pod["metadata"]["namespace"]
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._config_map(namespace, source["configMapRef"])
            elif "secretRef" in source:
                data = self._secret(namespace, source["secretRef"])
            else:
                continue
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "valueFrom" in var:
                value = self._env_value(pod, container, var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
        return env

    def _env_value(self, pod: Json, container: Json, source: Json) -> str | None:
        namespace = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]
            kind, _, name = resource.partition(".")
            value = (container.get("resources") or {}).get(kind, {}).get(name)
            return str(value) if value is not None else "0"
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return self._config_map(namespace, ref).get(ref["key"])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return self._secret(namespace, ref).get(ref["key"])
        return None

    def _config_map(self, namespace: str, ref: Json) -> dict[str, str]:
        try:
            obj = self.core.read_namespaced_config_map(ref["name"], namespace)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            raise ValueError(f"configmap {namespace}/{ref['name']}: {exc.reason}") from exc
        return dict(obj.data or {})

    def _secret(self, namespace: str, ref: Json) -> dict[str, str]:
        try:
            obj = self.core.read_namespaced_secret(ref["name"], namespace)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            raise ValueError(f"secret {namespace}/{ref['name']}: {exc.reason}") from exc
        return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}


def _field(pod: Json, path: str) -> str | None:
    """The downward API's fieldRef paths."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        value = (meta.get(match.group(1)) or {}).get(match.group(2))
        return str(value) if value is not None else None
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": NODE_IP,
        "status.hostIPs": NODE_IP,
        "status.podIP": status.get("podIP") or (NODE_IP if spec.get("hostNetwork") else ""),
        "status.podIPs": status.get("podIP") or (NODE_IP if spec.get("hostNetwork") else ""),
    }
    value = simple.get(path)
    return str(value) if value is not None else None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the container's whole process group (``ip netns exec`` and its child)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
