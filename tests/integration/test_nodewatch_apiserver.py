"""`NodeWatch` against the real API server: the cache it feeds follows new, relabelled,
rebooted and deleted Nodes, ignores heartbeats, and the thread stops when told to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devcluster.pytest_plugin import NodeFactory
from devcluster.waiting import wait_for
from nodesysctl.kube import Kube
from nodesysctl.nodewatch import NodeCache, NodesListed, NodeUpdate, NodeWatch

pytestmark = pytest.mark.integration


class Recorder:
    """What the operator does with the updates, minus the event loop: a cache, under a lock."""

    def __init__(self) -> None:
        self.cache = NodeCache()
        self.updates: list[NodeUpdate] = []
        self.changed: list[set[str]] = []
        self.lock = threading.Lock()

    def __call__(self, update: NodeUpdate) -> None:
        with self.lock:
            self.updates.append(update)
            self.changed.append(self.cache.apply(update))

    def facts(self, name: str) -> Any:
        with self.lock:
            return self.cache.nodes.get(name)


@pytest.fixture
def watched(api_client: Any) -> Iterator[tuple[NodeWatch, Recorder, threading.Thread]]:
    recorder = Recorder()
    watch = NodeWatch(Kube(api_client).with_own_pool(), recorder, page=2, watch_seconds=5)
    thread = watch.start()
    yield watch, recorder, thread
    watch.stop()
    thread.join(timeout=30)


def test_the_cache_follows_nodes_and_ignores_heartbeats(
    watched: tuple[NodeWatch, Recorder, threading.Thread],
    node_factory: NodeFactory,
    api_client: Any,
) -> None:
    watch, recorder, _ = watched
    early = node_factory(netns=False)
    wait_for(lambda: recorder.facts(early.name) is not None, timeout=30, what="the first node")
    assert isinstance(recorder.updates[0], NodesListed)

    late = node_factory(netns=False)
    wait_for(lambda: recorder.facts(late.name) is not None, timeout=30, what="a node added later")

    late.set_labels({"zone": "b"})
    wait_for(lambda: recorder.facts(late.name).labels.get("zone") == "b", timeout=30,
             what="the new label")  # fmt: skip
    boot = late.reboot()
    wait_for(lambda: recorder.facts(late.name).boot_id == boot, timeout=30, what="the boot ID")

    # A heartbeat (what a kubelet writes to the Ready condition) reaches the watch but changes
    # no facts.
    seen = len(recorder.updates)
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "lastHeartbeatTime": "2030-01-01T00:00:00Z"}  # fmt: skip
    core: Any = client.CoreV1Api(api_client)
    core.patch_node_status(early.name, {"status": {"conditions": [ready]}},
                           _content_type="application/strategic-merge-patch+json")  # fmt: skip
    wait_for(lambda: len(recorder.updates) > seen, timeout=30, what="the heartbeat event")
    assert recorder.changed[-1] == set()

    node_factory.remove(late)
    wait_for(lambda: recorder.facts(late.name) is None, timeout=30, what="the node deleted")
    assert watch.version  # the loop knows where to resume


def test_stop_ends_the_thread_within_one_watch_request(
    watched: tuple[NodeWatch, Recorder, threading.Thread],
) -> None:
    watch, recorder, thread = watched
    wait_for(lambda: bool(recorder.updates), timeout=30, what="the first list")
    watch.stop()
    thread.join(timeout=15)  # watch_seconds=5 plus the request's own time
    assert not thread.is_alive()
