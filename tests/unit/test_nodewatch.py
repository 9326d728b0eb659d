"""The Node cache and the list+watch loop that feeds it, against a scripted API (the loop's
decisions: resume, list again, back off). The real API server is in
tests/integration/test_nodewatch_apiserver.py."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from nodesysctl.kube import Kube, WatchExpiredError
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX
from nodesysctl.nodewatch import (
    STALE_SECONDS,
    NodeCache,
    NodeChanged,
    NodesListed,
    NodeUpdate,
    NodeWatch,
    NodeWatchStaleError,
    list_node_facts,
)
from nodesysctl.planning import NodeFacts, NodeResult, NodeState


def facts(name: str, boot: str = "b1", **labels: str) -> NodeFacts:
    return NodeFacts(name=name, labels=labels, boot_id=boot, results={})


def body(name: str, version: str, boot: str = "b1", heartbeat: str = "t0") -> dict[str, Any]:
    result = NodeResult(NodeState.COMPLIANT, "h", boot, datetime(2026, 1, 1, tzinfo=UTC), "j", "")
    return {
        "metadata": {
            "name": name,
            "resourceVersion": version,
            "labels": {"zone": "a"},
            "annotations": {ANNOTATION_RESULT_PREFIX + "p": result.to_annotation()},
        },
        "status": {
            "nodeInfo": {"bootID": boot},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
        },
    }


# --- NodeCache ------------------------------------------------------------------------------


def test_a_list_replaces_the_cache_and_reports_what_changed_or_vanished() -> None:
    cache = NodeCache()
    assert cache.apply(NodesListed([facts("a"), facts("b")])) == {"a", "b"}
    assert cache.apply(NodesListed([facts("a"), facts("b")])) == set()  # replayed: nothing new
    assert cache.apply(NodesListed([facts("a", boot="b2"), facts("c")])) == {"a", "b", "c"}
    assert set(cache.nodes) == {"a", "c"}
    assert cache.nodes["a"].boot_id == "b2"


def test_events_change_only_what_differs_and_deletes_are_idempotent() -> None:
    cache = NodeCache()
    cache.apply(NodesListed([facts("a")]))
    assert cache.apply(NodeChanged(facts("a"))) == set()  # a heartbeat: same facts
    assert cache.apply(NodeChanged(facts("a", zone="b"))) == {"a"}
    assert cache.apply(NodeChanged(facts("new"))) == {"new"}
    assert cache.apply(NodeChanged(facts("a"), deleted=True)) == {"a"}
    assert cache.apply(NodeChanged(facts("a"), deleted=True)) == set()
    assert set(cache.nodes) == {"new"}


# --- Listing ------------------------------------------------------------------------------


class Page(dict[str, Any]):
    """A parsed NodeList page that a weak reference can follow (a plain dict cannot)."""


class PagedRest:
    """`Kube.rest` serving Nodes in pages; checks that no earlier page is still alive when the
    next one is requested (5000 Nodes must never be in memory as bodies at once)."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.pages: list[weakref.ref[Page]] = []
        self.queries: list[dict[str, Any]] = []

    def get(self, path: str, **query: Any) -> Page:
        assert path == "/api/v1/nodes"
        assert [ref for ref in self.pages if ref() is not None] == []
        self.queries.append(query)
        start = int(query["continue"] or 0)
        end = start + int(query["limit"])
        more = str(end) if end < len(self.nodes) else None
        page = Page(
            items=self.nodes[start:end], metadata={"resourceVersion": "77", "continue": more}
        )
        self.pages.append(weakref.ref(page))
        return page


def test_nodes_are_listed_page_by_page_and_reduced_as_each_page_arrives() -> None:
    kube = Kube(cast(Any, None))
    rest = PagedRest([body(f"n{i}", str(i)) for i in range(5)])
    kube.rest = cast(Any, rest)
    nodes, version = list_node_facts(kube, page=2)
    assert [n.name for n in nodes] == ["n0", "n1", "n2", "n3", "n4"]
    assert nodes[0] == NodeFacts.from_body(body("n0", "0"))
    assert version == "77"
    assert [q["continue"] for q in rest.queries] == [None, "2", "4"]
    assert {q["limit"] for q in rest.queries} == {2}


# --- NodeWatch ------------------------------------------------------------------------------


def raw_node(facts: NodeFacts) -> dict[str, Any]:
    """A Node body as the API serves it, reducing to `facts` (results and taints aside)."""
    return {
        "metadata": {"name": facts.name, "labels": dict(facts.labels), "resourceVersion": "1"},
        "spec": {"unschedulable": facts.availability.unschedulable},
        "status": {
            "nodeInfo": {"bootID": facts.boot_id},
            "conditions": [{"type": "Ready", "status": facts.availability.ready}],
            "images": [{"names": ["x"]}],
        },
    }


class ScriptedApi:
    """Each list serves the next scripted list, as raw pages; each watch plays the next
    scripted stream (a list of events, or an exception raised when that point is reached)."""

    def __init__(self, lists: list[tuple[list[NodeFacts], str]], watches: list[list[Any]]):
        self.lists = lists
        self.watches = watches
        self.calls: list[tuple[str, ...]] = []
        self.watch: NodeWatch | None = None

    def list_node_pages(self, page: int = 100) -> Iterator[dict[str, Any]]:
        self.calls.append(("list",))
        nodes, version = self.lists.pop(0)
        for start in range(0, max(len(nodes), 1), page):
            items = [raw_node(f) for f in nodes[start : start + page]]
            yield {"metadata": {"resourceVersion": version}, "items": items}

    def watch_nodes(self, version: str, timeout_seconds: int) -> Iterator[tuple[str, Any]]:
        self.calls.append(("watch", version))
        if not self.watches:
            assert self.watch is not None
            self.watch.stop()  # the script is over
            return
        for step in self.watches.pop(0):
            if isinstance(step, Exception):
                raise step
            if callable(step):
                step()  # e.g. time passing on a fake clock
                continue
            yield step


def run(api: ScriptedApi) -> tuple[list[NodeUpdate], list[float]]:
    updates: list[NodeUpdate] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> bool:
        sleeps.append(seconds)
        return False

    api.watch = NodeWatch(api, updates.append, sleep=sleep)
    api.watch.run()
    return updates, sleeps


def test_lists_then_watches_from_the_lists_version_and_reduces_each_event() -> None:
    api = ScriptedApi(
        lists=[([facts("a")], "10")],
        watches=[[("MODIFIED", body("a", "11", heartbeat="t1")), ("ADDED", body("b", "12"))]],
    )
    updates, _ = run(api)
    assert api.calls[:2] == [("list",), ("watch", "10")]
    assert updates[0] == NodesListed([facts("a")])
    changed = [u for u in updates if isinstance(u, NodeChanged)]
    assert [u.facts.name for u in changed] == ["a", "b"]
    assert changed[0].facts.labels == {"zone": "a"}
    assert changed[0].facts.results["p"].status is NodeState.COMPLIANT
    assert api.calls[2] == ("watch", "12")  # resumes after the last event seen


def test_bookmarks_advance_the_version_without_an_update() -> None:
    bookmark = {"metadata": {"resourceVersion": "50"}}
    api = ScriptedApi(lists=[([], "10")], watches=[[("BOOKMARK", bookmark)]])
    updates, _ = run(api)
    assert updates == [NodesListed([])]
    assert api.calls[2] == ("watch", "50")


def test_a_dropped_watch_resumes_from_the_last_version_after_a_backoff() -> None:
    api = ScriptedApi(
        lists=[([], "10")],
        watches=[
            [("ADDED", body("a", "11")), ConnectionResetError("apiserver restarting")],
            [ConnectionRefusedError("still down")],
            [("DELETED", body("a", "14"))],
        ],
    )
    updates, sleeps = run(api)
    assert [c for c in api.calls if c[0] == "list"] == [("list",)]  # no relist needed
    assert api.calls[1:4] == [("watch", "10"), ("watch", "11"), ("watch", "11")]
    assert sleeps[:2] == [1.0, 2.0]  # exponential backoff
    assert updates[-1] == NodeChanged(NodeFacts.from_body(body("a", "14")), deleted=True)


def test_an_expired_version_lists_again() -> None:
    api = ScriptedApi(
        lists=[([facts("a")], "10"), ([facts("b")], "90")],
        watches=[[WatchExpiredError("too old resource version: 10 (80)")], []],
    )
    updates, sleeps = run(api)
    assert api.calls[:4] == [("list",), ("watch", "10"), ("list",), ("watch", "90")]
    assert updates[:2] == [NodesListed([facts("a")]), NodesListed([facts("b")])]
    assert sleeps == [1.0]  # only the empty second watch (it ended at once) waited


def test_a_failed_list_is_retried_and_stop_ends_the_loop() -> None:
    class FailingList(ScriptedApi):
        def list_node_pages(self, page: int = 100) -> Iterator[dict[str, Any]]:
            self.calls.append(("list",))
            raise ConnectionRefusedError("apiserver down")

    api = FailingList(lists=[], watches=[])
    attempts: list[float] = []

    def sleep(seconds: float) -> bool:
        attempts.append(seconds)
        return len(attempts) == 3  # stopped during the third wait

    NodeWatch(api, lambda update: None, sleep=sleep).run()
    assert api.calls == [("list",)] * 3
    assert attempts == [1.0, 2.0, 4.0]


def test_the_watchs_own_clock_decides_when_a_watch_was_healthy_enough_to_reset() -> None:
    now = [1000.0]

    def later(seconds: float) -> Any:
        return lambda: now.__setitem__(0, now[0] + seconds)

    api = ScriptedApi(
        lists=[([], "10")],
        watches=[
            [ConnectionResetError("down")],
            [later(0.5)],  # ended at once (under a second): backs off further
            [later(5.0)],  # a healthy watch: the next failure starts over
            [ConnectionResetError("down again")],
        ],
    )
    updates: list[NodeUpdate] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> bool:
        sleeps.append(seconds)
        return False

    api.watch = NodeWatch(api, updates.append, sleep=sleep, clock=lambda: now[0])
    assert api.watch.last_contact == 1000.0
    api.watch.run()
    assert sleeps == [1.0, 2.0, 1.0]
    assert api.watch.last_contact == 1005.5  # the server's end of the healthy watch
    assert api.watch.health() == {"listed": True, "secondsSinceContact": 0.0}
    now[0] += STALE_SECONDS + 1
    with pytest.raises(NodeWatchStaleError):
        api.watch.health()


def test_heartbeats_reduce_to_equal_facts() -> None:
    first = NodeFacts.from_body(body("a", "1", heartbeat="t1"))
    assert NodeFacts.from_body(body("a", "2", heartbeat="t2")) == first


def test_health_counts_every_answer_of_the_api_server_and_fails_when_stale() -> None:
    # Whole seconds on a fake clock: on time.monotonic()'s values, (t + 600) - t is above 600
    # about one time in five (float rounding), which made this test flaky.
    now = [1000.0]
    api = ScriptedApi(
        lists=[([facts("a")], "10")],
        watches=[[lambda: now.__setitem__(0, 1003.0), ("BOOKMARK", {"metadata": {}})]],
    )
    watch = NodeWatch(api, lambda update: None, sleep=lambda seconds: False, clock=lambda: now[0])
    assert watch.health()["listed"] is False  # starting: within its grace period
    api.watch = watch
    before = now[0]
    watch.run()
    assert watch.last_contact >= before
    assert watch.health() == {"listed": True, "secondsSinceContact": pytest.approx(0, abs=1)}
    assert watch.health(now=watch.last_contact + STALE_SECONDS)["listed"] is True
    with pytest.raises(NodeWatchStaleError, match="for 601 s"):
        watch.health(now=watch.last_contact + STALE_SECONDS + 1)


def test_the_facts_say_which_readiness_taints_of_ours_a_node_still_carries() -> None:
    taints: list[dict[str, str]] = [
            {"key": "nodesysctl.io/unverified", "effect": "NoSchedule"},
            {"key": "nodesysctl.io/unverified-gpu", "effect": "NoExecute",
             "timeAdded": "2026-12-01T12:00:00Z"},
            {"key": "example.com/dedicated", "effect": "NoSchedule"},
            {"key": "nodesysctl.io/unverified", "effect": "PreferNoSchedule"},
    ]  # fmt: skip
    body: dict[str, Any] = {"metadata": {"name": "n1"}, "spec": {"taints": taints}}
    cache = NodeCache()
    cache.apply(NodesListed([NodeFacts.from_body(body)]))
    unverified = cache.nodes["n1"].readiness_taints
    assert [str(t) for t in unverified] == [
        "nodesysctl.io/unverified:NoSchedule",
        "nodesysctl.io/unverified-gpu:NoExecute",
    ]
    # Our taint removed: the facts change, so the policies wake.
    body["spec"]["taints"] = taints[2:]
    assert cache.apply(NodeChanged(NodeFacts.from_body(body))) == {"n1"}
    assert cache.nodes["n1"].readiness_taints == ()
