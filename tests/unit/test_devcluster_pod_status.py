"""The pod statuses the simulated kubelet reports (no cluster needed)."""

from __future__ import annotations

from typing import Any

import pytest

from devcluster.kubelet.status import (
    DEADLINE_MESSAGE,
    container_base,
    exit_code,
    finished_status,
    running_status,
    terminated,
)

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", "2026-01-01T00:00:09Z"


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}], **spec},
    }


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {T1}
    return {c["type"]: (c["status"], c.get("reason")) for c in status["conditions"]}


def test_a_started_pod_is_running_and_ready() -> None:
    status = running_status(pod(), T0, T1)
    assert status["phase"] == "Running"
    assert status["startTime"] == T0
    assert (status["hostIP"], status["hostIPs"]) == ("127.0.0.1", [{"ip": "127.0.0.1"}])
    assert "podIP" not in status  # no pod network
    assert conditions_of(status) == {
        "PodReadyToStartContainers": ("True", None),
        "Initialized": ("True", None),
        "ContainersReady": ("True", None),
        "Ready": ("True", None),
    }
    assert status["containerStatuses"] == [
        {
            "name": "app",
            "image": "nginx:1",
            "imageID": "simulated://nginx:1",
            "containerID": "simulated://u-1/app",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": T0}},
        }
    ]
    assert "initContainerStatuses" not in status


def test_init_containers_count_as_completed() -> None:
    status = running_status(pod(initContainers=[{"name": "init"}]), T0, T1)
    (init,) = status["initContainerStatuses"]
    assert (init["name"], init["image"], init["ready"], init["started"]) == (
        "init",
        "",
        True,
        False,
    )
    assert init["state"] == {
        "terminated": {"exitCode": 0, "reason": "Completed", "startedAt": T0, "finishedAt": T0}
    }


def test_a_host_network_pod_has_the_node_ip() -> None:
    status = running_status(pod(hostNetwork=True), T0, T1)
    assert (status["podIP"], status["podIPs"]) == ("127.0.0.1", [{"ip": "127.0.0.1"}])


def test_a_terminated_container() -> None:
    base = container_base("u-1", {"name": "agent", "image": "img"})
    assert (base["ready"], base["started"], base["restartCount"]) == (False, False, 0)
    done = terminated(base, code=0, message="", started_at=T0, finished_at=T2)
    assert done == {
        **base,
        "state": {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": T0,
                "finishedAt": T2,
                "containerID": "simulated://u-1/agent",
            }
        },
    }  # an empty message is left out
    failed = terminated(base, code=2, message='{"status": "Failed"}', started_at=T0, finished_at=T2)
    assert failed["state"]["terminated"]["reason"] == "Error"
    assert failed["state"]["terminated"]["message"] == '{"status": "Failed"}'
    killed = terminated(
        base, code=137, message="", started_at=T0, finished_at=T2, reason="DeadlineExceeded"
    )
    assert killed["state"]["terminated"]["reason"] == "DeadlineExceeded"


@pytest.mark.parametrize(("returncode", "code"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_killed_by_a_signal_is_128_plus_the_signal(returncode: int, code: int) -> None:
    assert exit_code(returncode) == code


def results(*codes: int) -> list[dict[str, Any]]:
    base = container_base("u-1", {"name": "agent"})
    return [terminated(base, code=c, message="", started_at=T0, finished_at=T2) for c in codes]


def test_all_containers_exit_0_the_pod_succeeds() -> None:
    status = finished_status(pod(), T0, results(0, 0), deadline_exceeded=False, stamp=T1)
    assert status["phase"] == "Succeeded"
    assert status["startTime"] == T0
    assert status["containerStatuses"] == results(0, 0)
    assert "reason" not in status
    assert conditions_of(status) == {
        "PodReadyToStartContainers": ("True", None),
        "Initialized": ("True", None),
        "ContainersReady": ("False", "PodCompleted"),
        "Ready": ("False", "PodCompleted"),
    }


def test_one_container_fails_the_pod_fails() -> None:
    status = finished_status(pod(), T0, results(0, 1), deadline_exceeded=False, stamp=T1)
    assert status["phase"] == "Failed"
    assert "reason" not in status


def test_past_the_deadline_the_pod_fails_with_its_reason() -> None:
    status = finished_status(pod(), T0, results(137), deadline_exceeded=True, stamp=T1)
    assert (status["phase"], status["reason"]) == ("Failed", "DeadlineExceeded")
    assert status["message"] == DEADLINE_MESSAGE
