"""What the simulated kubelet makes of its Nodes' Ready condition (no cluster needed)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from devcluster.kubelet.readiness import (
    NOT_READY_TAINT,
    UNREACHABLE_TAINT,
    NodeReadiness,
    ReadyWatch,
)


def node(name: str = "n1", ready: str | None = "True", *taints: str) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "Unknown", "reason": "NodeStatusUnknown"}]
    if ready is not None:
        reason = {"True": "KubeletReady", "Unknown": "NodeStatusUnknown"}.get(ready, "Other")
        conditions.append({"type": "Ready", "status": ready, "reason": reason})
    return {
        "metadata": {"name": name},
        "spec": {"taints": [{"key": key, "effect": "NoSchedule"} for key in taints]},
        "status": {"conditions": conditions},
    }


class NoApi:
    """The watch is fed by hand here: its list call is never made."""

    def list_node(self, **_: Any) -> None:
        raise AssertionError("not called in these tests")


class Recorder:
    def __init__(self) -> None:
        self.marked: list[str] = []

    def watch(self) -> ReadyWatch:
        return ReadyWatch(NoApi(), threading.Event(), print, self.marked.append)


def test_readiness_of_a_node() -> None:
    assert NodeReadiness.of(node()) == NodeReadiness("True", "KubeletReady")
    assert NodeReadiness.of(node()).healthy
    marked = NodeReadiness.of(node("n1", "Unknown", UNREACHABLE_TAINT, "dedicated"))
    assert marked == NodeReadiness("Unknown", "NodeStatusUnknown", (UNREACHABLE_TAINT,))
    assert not marked.healthy
    assert str(marked) == (
        "Ready=Unknown (NodeStatusUnknown), tainted node.kubernetes.io/unreachable"
    )
    # A new node: Ready, but the not-ready taint the API server added is still on it.
    assert not NodeReadiness.of(node("n1", "True", NOT_READY_TAINT)).healthy
    assert NodeReadiness.of(node("n1", None)) == NodeReadiness("")
    assert str(NodeReadiness("")) == "Ready=missing"


@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED"])
def test_the_controllers_unknown_mark_calls_for_a_repost_once(kind: str) -> None:
    recorder = Recorder()
    watch = recorder.watch()
    watch.on_event("ADDED", node())
    watch.on_event(kind, node("n1", "Unknown"))
    watch.on_event("MODIFIED", node("n1", "Unknown", UNREACHABLE_TAINT))  # the taint follows
    assert recorder.marked == ["n1"]
    watch.on_event("MODIFIED", node("n1", "True", UNREACHABLE_TAINT))  # reposted
    watch.on_event("MODIFIED", node("n1", "Unknown"))  # marked again later
    assert recorder.marked == ["n1", "n1"]


def test_a_node_unknown_when_first_seen_calls_for_a_repost() -> None:
    recorder = Recorder()
    recorder.watch().on_event("ADDED", node("n2", "Unknown"))
    assert recorder.marked == ["n2"]


def test_a_kubelets_own_not_ready_is_left_alone() -> None:
    recorder = Recorder()
    watch = recorder.watch()
    watch.on_event("ADDED", node())
    watch.on_event("MODIFIED", node("n1", "False", NOT_READY_TAINT))
    assert recorder.marked == []
    assert [(c.node, c.ready) for c in watch.changes_since(0)] == [("n1", "False")]


def test_ready_changes_are_recorded_in_order_since_a_moment() -> None:
    watch = Recorder().watch()
    watch.on_event("ADDED", node("a"))
    watch.on_event("ADDED", node("b"))
    watch.on_event("ADDED", node("c", "Unknown"))  # never seen Ready: not a change
    watch.on_event("MODIFIED", node("a", "Unknown"))
    middle = time.time()
    watch.on_event("MODIFIED", node("b", "Unknown"))
    watch.on_event("MODIFIED", node("a", "True"))
    watch.on_event("MODIFIED", node("a", "False"))
    assert [str(c) for c in watch.changes_since(0)] == [
        "a: Ready=Unknown (NodeStatusUnknown)",
        "b: Ready=Unknown (NodeStatusUnknown)",
        "a: Ready=False (Other)",
    ]
    assert [c.node for c in watch.changes_since(middle)] == ["b", "a"]
    assert watch.changes_total == 3


def test_unhealthy_nodes_include_those_not_seen_yet() -> None:
    watch = Recorder().watch()
    watch.on_event("ADDED", node("ready"))
    watch.on_event("ADDED", node("new", "True", NOT_READY_TAINT))
    watch.on_event("ADDED", node("gone", "Unknown"))
    watch.on_event("DELETED", node("gone", "Unknown"))
    unhealthy = watch.unhealthy(["ready", "new", "gone", "never"])
    assert sorted(unhealthy) == ["gone", "never", "new"]
    assert unhealthy["never"].reason == "not seen by the node watch yet"
    assert watch.readiness("ready") == NodeReadiness("True", "KubeletReady")
    assert watch.readiness("gone") is None
