"""The simulated kubelet's heartbeat workers against fake API clients (no cluster needed)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from devcluster.kubelet.heartbeats import Heartbeats, HeartbeatWorkers, _serve
from devcluster.waiting import wait_for

PERIOD = 0.2  # seconds: fast enough for a unit test, slow enough for a loaded machine


class _Answer:
    """A raw (``_preload_content=False``) answer."""

    def __init__(self, data: bytes = b"{}") -> None:
        self.data = data

    def drain_conn(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Records renewals, condition posts and Lease creations per node; can fail them."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.renewals: dict[str, int] = {}
        self.posts: dict[str, list[dict[str, Any]]] = {}
        self.created: list[dict[str, Any]] = []
        self.missing_leases: set[str] = set()
        self.failing_posts = 0

    def count(self, name: str) -> int:
        with self.lock:
            return self.renewals.get(name, 0)

    # CoordinationV1Api
    def patch_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> _Answer:
        time.sleep(self.latency)  # the request's round trip
        with self.lock:
            if name in self.missing_leases:
                self.missing_leases.discard(name)
                raise ApiException(status=404, reason="Not Found")
            self.renewals[name] = self.renewals.get(name, 0) + 1
        assert namespace == "kube-node-lease"
        assert body["spec"]["holderIdentity"] == name
        return _Answer()

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> _Answer:
        with self.lock:
            self.created.append(body)
        return _Answer()

    # CoreV1Api
    def read_node(self, name: str, **_: Any) -> _Answer:
        return _Answer(json.dumps({"metadata": {"name": name, "uid": f"uid-{name}"}}).encode())

    def patch_node_status(self, name: str, body: Any, **_: Any) -> _Answer:
        with self.lock:
            if self.failing_posts:
                self.failing_posts -= 1
                raise ApiException(status=500, reason="Internal Server Error")
            self.posts.setdefault(name, []).append(body)
        return _Answer()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def errors() -> list[str]:
    return []


def start_workers(api: FakeApi, errors: list[str], **options: Any) -> HeartbeatWorkers:
    settings: dict[str, Any] = {
        "renew_interval": PERIOD,
        "lease_duration_seconds": 4,
        "parallelism": 2,
        "max_parallelism": 2,
        **options,
    }
    workers = HeartbeatWorkers(api, api, threading.Event(), errors.append, **settings)
    workers.start()
    return workers


@pytest.fixture
def workers(api: FakeApi, errors: list[str]) -> Iterator[HeartbeatWorkers]:
    running = start_workers(api, errors)
    yield running
    running._stop.set()
    running.join(timeout=5)


def test_every_node_is_renewed_once_per_period(
    workers: HeartbeatWorkers, api: FakeApi, errors: list[str]
) -> None:
    for name in ("a", "b", "c"):
        workers.add(name)
    wait_for(lambda: all(api.count(n) >= 3 for n in "abc"), timeout=30, what="3 renewals each")
    stats = workers.stats()
    assert stats.nodes == 3
    assert stats.failures == 0
    assert stats.never_renewed == 0
    assert stats.renewals >= 9
    assert stats.period_seconds == PERIOD
    assert stats.max_gap_seconds >= PERIOD * 0.5  # renewed on its phase, not in a tight loop
    assert errors == []


def test_a_paused_node_is_not_renewed_and_resumes_at_once_with_its_conditions(
    workers: HeartbeatWorkers, api: FakeApi
) -> None:
    workers.add("hung")
    workers.add("alive")
    wait_for(lambda: api.count("hung") >= 1, timeout=30, what="a first renewal")
    workers.pause("hung")
    paused_at = api.count("hung")
    wait_for(lambda: api.count("alive") >= paused_at + 5, timeout=30, what="the others go on")
    # At most one renewal was already on its way when the pause came.
    assert api.count("hung") <= paused_at + 1
    # The controller's Unknown mark while paused is answered only once the kubelet is back.
    workers.heartbeat_now("hung", post_conditions=True)
    assert "hung" not in api.posts
    before = api.count("hung")
    workers.resume("hung", post_conditions=False)
    wait_for(lambda: api.posts.get("hung"), timeout=30, what="the conditions posted on resume")
    assert api.count("hung") > before
    conditions = {c["type"]: c for c in api.posts["hung"][0]["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "KubeletReady"
    assert {conditions[k]["status"] for k in ("MemoryPressure", "DiskPressure", "PIDPressure")} == {
        "False"
    }
    # The pause is not counted as a gap of the workers.
    assert workers.stats().max_gap_seconds < 30


def test_a_repost_says_what_the_kubelet_last_reported(
    workers: HeartbeatWorkers, api: FakeApi
) -> None:
    workers.add("down")
    workers.set_ready("down", False)  # node.set_ready(False): its runtime is down
    workers.heartbeat_now("down", post_conditions=True)
    wait_for(lambda: api.posts.get("down"), timeout=30, what="the repost")
    ready = next(c for c in api.posts["down"][0]["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "KubeletNotReady")
    workers.set_ready("down", True)
    workers.heartbeat_now("down", post_conditions=True)
    wait_for(lambda: len(api.posts["down"]) == 2, timeout=30, what="the second repost")
    ready = next(c for c in api.posts["down"][1]["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")


def test_a_failed_condition_post_is_retried_with_the_next_renewal(
    workers: HeartbeatWorkers, api: FakeApi, errors: list[str]
) -> None:
    api.failing_posts = 1
    workers.add("n")
    workers.heartbeat_now("n", post_conditions=True)
    wait_for(lambda: api.posts.get("n"), timeout=30, what="the retried post")
    assert any("posting the conditions of n: 500" in e for e in errors)


def test_a_deleted_lease_is_created_again(workers: HeartbeatWorkers, api: FakeApi) -> None:
    api.missing_leases.add("n")
    workers.add("n")
    wait_for(lambda: api.created, timeout=30, what="the Lease created again")
    owner = api.created[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("Node", "uid-n")


def test_a_removed_node_is_no_longer_renewed(workers: HeartbeatWorkers, api: FakeApi) -> None:
    workers.add("gone")
    workers.add("kept")
    wait_for(lambda: api.count("gone") >= 1, timeout=30, what="a first renewal")
    workers.remove("gone")
    removed_at = api.count("gone")
    wait_for(lambda: api.count("kept") >= removed_at + 5, timeout=30, what="the others go on")
    assert api.count("gone") <= removed_at + 1
    assert workers.stats().nodes == 1


def test_workers_are_added_while_renewals_go_out_late(errors: list[str]) -> None:
    slow = FakeApi(latency=0.3)  # a loaded machine: every request takes 300 ms
    workers = start_workers(slow, errors, parallelism=1, max_parallelism=6)
    try:
        for index in range(20):  # 20 renewals per 0.2 s need ~30 requests in flight
            workers.add(f"n{index}")
        wait_for(lambda: workers.stats().parallelism == 6, timeout=30, what="6 workers")
        wait_for(lambda: workers.stats().renewals >= 40, timeout=30, what="40 renewals")
        stats = workers.stats()
        assert stats.max_late_seconds > 0.25  # why they were added
        assert stats.parallelism == 6  # and no more than the bound
    finally:
        workers._stop.set()
        workers.join(timeout=5)


def test_the_command_protocol(workers: HeartbeatWorkers, api: FakeApi) -> None:
    answers: list[dict[str, Any]] = []
    commands = [
        {"op": "add", "name": "n", "created": time.monotonic()},
        {"op": "pause", "name": "n"},
        {"op": "now", "name": "n", "post": True},
        {"op": "ready", "name": "n", "ready": False},
        {"op": "resume", "name": "n", "post": False},
        {"op": "stats", "reset": True, "id": 7},
        {"op": "remove", "name": "n"},
        {"op": "stats", "reset": False, "id": 8},
        {"op": "reboot", "name": "n"},
    ]
    _serve(workers, io.StringIO("".join(json.dumps(c) + "\n" for c in commands)), answers.append)
    assert [a.get("id") for a in answers] == [7, 8, None]
    assert answers[0]["stats"]["nodes"] == 1
    assert answers[1]["stats"]["nodes"] == 0
    assert answers[2] == {"error": "heartbeat process: unknown command 'reboot'"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"renew_interval": 40.0}, "shorter than the lease duration"),
        ({"renew_interval": 0.0}, "positive"),
        ({"parallelism": 0}, "parallelism"),
        ({"parallelism": 9, "max_parallelism": 8}, "max_parallelism"),
    ],
)
def test_settings_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {
        "renew_interval": 10.0,
        "lease_duration_seconds": 40,
        "parallelism": 4,
        "max_parallelism": 8,
        **options,
    }
    with pytest.raises(ValueError, match=message):
        Heartbeats(None, print, **settings)  # type: ignore[arg-type]
