"""The pod statuses the simulated kubelet reports, shaped as a kubelet's.

Pure: every time is passed in (``api_formats.now()`` at the caller), so the bodies are
unit-tested without a cluster (tests/unit/test_devcluster_pod_status.py).

- a pod that starts: phase Running, every container ready and running, init containers
  terminated with exit code 0 (nothing is run for them);
- an agent pod whose containers have run: Succeeded, or Failed if one exited non-zero or the
  pod ran out of ``activeDeadlineSeconds`` (reason DeadlineExceeded), with each container's
  ``state.terminated`` (exitCode, reason Completed/Error, message = its termination file).
"""

from __future__ import annotations

from typing import Any

from ..nodes import NODE_IP

Json = dict[str, Any]

DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def conditions(ready: bool, stamp: str, reason: str | None = None) -> list[Json]:
    """The four pod conditions; ``reason`` goes on those that are False."""
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


def pod_ips(pod: Json) -> Json:
    """hostIP always; a pod IP only for hostNetwork pods (there is no pod network)."""
    ips: Json = {"hostIP": NODE_IP, "hostIPs": [{"ip": NODE_IP}]}
    if pod["spec"].get("hostNetwork"):
        ips.update(podIP=NODE_IP, podIPs=[{"ip": NODE_IP}])
    return ips


def container_base(uid: str, container: Json) -> Json:
    """A containerStatus without its state: not ready, not started, never restarted."""
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": f"simulated://{container.get('image', '')}",
        "containerID": f"simulated://{uid}/{container['name']}",
        "ready": False,
        "started": False,
        "restartCount": 0,
    }


def running_status(pod: Json, started_at: str, stamp: str) -> Json:
    """Running and Ready since ``started_at``; ``stamp`` is now, for the conditions."""
    uid = pod["metadata"]["uid"]
    spec = pod["spec"]
    status: Json = {
        "phase": "Running",
        "startTime": started_at,
        **pod_ips(pod),
        "conditions": conditions(True, stamp),
        "containerStatuses": [
            {
                **container_base(uid, c),
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": started_at}},
            }
            for c in spec.get("containers", [])
        ],
    }
    if spec.get("initContainers"):
        status["initContainerStatuses"] = [
            {
                **container_base(uid, c),
                "ready": True,
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


def exit_code(returncode: int) -> int:
    """A process's exit code as a container's: killed by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def terminated(
    base: Json,
    *,
    code: int,
    message: str,
    started_at: str,
    finished_at: str,
    reason: str | None = None,
) -> Json:
    """``base`` (see :func:`container_base`) in ``state.terminated``; the reason defaults to
    Completed for exit code 0, else Error; an empty message is left out."""
    state = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
        "containerID": base["containerID"],
    }
    if message:
        state["message"] = message
    return {**base, "state": {"terminated": state}}


def finished_status(
    pod: Json, started_at: str, results: list[Json], *, deadline_exceeded: bool, stamp: str
) -> Json:
    """Succeeded, or Failed when a container exited non-zero or the deadline was exceeded."""
    failed = deadline_exceeded or any(r["state"]["terminated"]["exitCode"] != 0 for r in results)
    status: Json = {
        "phase": "Failed" if failed else "Succeeded",
        "startTime": started_at,
        **pod_ips(pod),
        "conditions": conditions(False, stamp, "PodCompleted"),
        "containerStatuses": results,
    }
    if deadline_exceeded:
        status["reason"] = "DeadlineExceeded"
        status["message"] = DEADLINE_MESSAGE
    return status
