"""What the simulated kubelet does with the pods bound to its nodes.

- pods of agent Jobs (label ``app.kubernetes.io/name=nodesysctl-agent``) are RUN for real: each
  container as a host process (:mod:`.process` says how), one after the other; the pod goes
  Running, then Succeeded/Failed (:mod:`.status`). ``activeDeadlineSeconds`` kills a hung
  process (phase Failed, reason DeadlineExceeded); ``restartPolicy`` is treated as Never;
- any other pod becomes Running and Ready at once (no process), so rollouts complete; a
  ``hostNetwork`` pod gets the node's IP as its pod IP (:mod:`.status`);
- a pod being deleted (``deletionTimestamp``) is killed and removed with grace 0. An eviction
  (the Eviction API) is such a deletion, so an evicted DaemonSet pod is gone at once and the
  DaemonSet controller creates its replacement on the same node.

Pod work runs in a small thread pool, so a long agent run does not hold up the pod watch.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import nodesysctl
from nodesysctl.labels import AGENT_APP, LABEL_APP

from ..nodes import SimulatedNode
from . import status
from .api_formats import STRATEGIC, now
from .process import container_argv, container_env

log = logging.getLogger(__name__)

Json = dict[str, Any]

TERMINATION_MESSAGE_LIMIT = 4096  # bytes per container, as the kubelet
DEFAULT_AGENT_DEADLINE = 600.0  # seconds, when the pod sets no activeDeadlineSeconds
STATUS_RETRY_SECONDS = 120.0  # how long a pod status update is retried while the API is down


def is_agent_pod(pod: Json) -> bool:
    return (pod["metadata"].get("labels") or {}).get(LABEL_APP) == AGENT_APP


def _source_root() -> str:
    """The directory that holds the nodesysctl package (for PYTHONPATH of agent runs)."""
    return str(Path(nodesysctl.__file__).resolve().parent.parent)


class PodRunner:
    """Takes each pod event of the pod watch (:meth:`on_pod`) for the nodes ``node_named``
    knows; everything it starts is killed by :meth:`stop`."""

    def __init__(
        self,
        core: Any,
        pods_dir: Path,
        stop: threading.Event,
        report_error: Callable[[str], None],
        node_named: Callable[[str], SimulatedNode | None],
        *,
        max_parallel_pods: int,
    ) -> None:
        self.core = core
        self.pods_dir = pods_dir
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self._stop = stop
        self._report_error = report_error
        self._node_named = node_named
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_parallel_pods, thread_name_prefix="sim-pod")
        self._started_pods: set[str] = set()  # pod UIDs we have taken on
        self._deleting_pods: set[str] = set()  # pod UIDs we have force-deleted
        self._processes: dict[str, subprocess.Popen[bytes]] = {}  # pod UID -> running container

    def stop(self) -> None:
        """Kill every running container and wait for the pool (the stop event is set)."""
        with self._lock:
            processes = list(self._processes.values())
        for proc in processes:
            _kill(proc)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ----------------------------------------------------------------- pod events
    def on_pod(self, kind: str, pod: Json) -> None:
        spec, meta = pod.get("spec", {}), pod["metadata"]
        node_name = spec.get("nodeName")
        uid = meta["uid"]
        if kind == "DELETED":
            with self._lock:
                self._started_pods.discard(uid)
                self._deleting_pods.discard(uid)
            return
        node = self._node_named(node_name) if node_name else None
        if node is None:
            return
        with self._lock:
            if meta.get("deletionTimestamp"):
                if uid in self._deleting_pods:
                    return
                self._deleting_pods.add(uid)
                proc = self._processes.get(uid)
            elif uid in self._started_pods:
                return
            else:
                self._started_pods.add(uid)
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished before we (re)started
                if is_agent_pod(pod):
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
                self._report_error(f"{func.__name__}: {exc.status} {exc.reason} {exc.body}")
        except Exception as exc:
            if not self._stop.is_set():
                log.exception("%s failed", func.__name__)
                self._report_error(f"{func.__name__}: {exc!r}")

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

    def _patch_status(self, pod: Json, body: Json) -> None:
        """Report a pod's status; like a kubelet's status manager, keep trying while the API
        server is unavailable (a restart refuses connections for seconds). A deleted pod or any
        other refusal ends it."""
        meta = pod["metadata"]
        delay = 0.25
        give_up = time.monotonic() + STATUS_RETRY_SECONDS
        while True:
            try:
                self.core.patch_namespaced_pod_status(
                    meta["name"], meta["namespace"], {"status": body}, _content_type=STRATEGIC
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

    def _start_plain_pod(self, pod: Json) -> None:
        """Not an agent pod: Running and Ready, no process."""
        started_at = now()
        self._patch_status(pod, status.running_status(pod, started_at, started_at))

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
        self._patch_status(pod, status.running_status(pod, started_at, now()))

        deadline_s = spec.get("activeDeadlineSeconds")
        deadline = time.monotonic() + (
            float(deadline_s) if deadline_s is not None else DEFAULT_AGENT_DEADLINE
        )
        results: list[Json] = []
        deadline_exceeded = False
        for container in spec.get("containers", []):
            if self._stop.is_set():
                return
            result, deadline_hit = self._run_container(pod, container, node, pod_dir, deadline)
            results.append(result)
            deadline_exceeded = deadline_exceeded or deadline_hit
            if deadline_exceeded:
                break
        with self._lock:
            if uid in self._deleting_pods:
                return  # deleted while running: nothing left to report
        self._patch_status(
            pod,
            status.finished_status(
                pod, started_at, results, deadline_exceeded=deadline_exceeded, stamp=now()
            ),
        )

    def _run_container(
        self,
        pod: Json,
        container: Json,
        node: SimulatedNode,
        pod_dir: Path,
        deadline: float,
    ) -> tuple[Json, bool]:
        """The container's terminated status, and whether the pod's deadline killed it."""
        uid = pod["metadata"]["uid"]
        name = container["name"]
        termination_file = pod_dir / f"{name}.termination-log"
        termination_file.write_text("")
        log_file = pod_dir / f"{name}.log"
        started_at = now()
        base = status.container_base(uid, container)

        try:
            argv = container_argv(pod, container, node, termination_file)
            env = container_env(
                pod,
                container,
                node,
                host_env=os.environ,
                source_root=_source_root(),
                config_map=self._config_map,
                secret=self._secret,
            )
        except ValueError as exc:
            start_error = status.terminated(
                base, code=128, message=str(exc), started_at=started_at, finished_at=now(),
                reason="StartError",
            )  # fmt: skip
            return start_error, False

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
        code = status.exit_code(proc.wait())
        message = termination_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            tail = log_file.read_bytes()[-2048:].decode(errors="replace")
            message = "\n".join(tail.splitlines()[-80:])
        result = status.terminated(
            base, code=code, message=message, started_at=started_at, finished_at=now(),
            reason="DeadlineExceeded" if deadline_hit else None,
        )  # fmt: skip
        return result, deadline_hit

    # ----------------------------------------------------------------- configMaps, secrets
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


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the container's whole process group (``ip netns exec`` and its child)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
