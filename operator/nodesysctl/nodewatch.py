"""The Node cache's source: one list+watch of Nodes, each Node reduced to its `NodeFacts` the
moment it arrives. `NodeFacts.from_body` is applied here and nowhere else: `Kube` hands over
raw list pages and watch events (`NodeSource`), for the watch and `nodesysctl status` alike.

Why not a Kopf watch: Kopf hands each object to a per-object worker together with its full
body, and at start-up every Node's body is in flight at once. Real Nodes are 10-15 KiB of JSON
(mostly `status.images`), ~60 KiB once parsed: 5000 of them peaked at 176 MiB RSS through Kopf,
against a few hundred bytes of facts each (docs/performance.md). This is client-go's reflector
with a transform: list in pages, watch from the list's resourceVersion with bookmarks, resume
after a dropped connection, list again when the version expired (HTTP 410).

The facts carry each Node's NoSchedule and NoExecute taints (without `timeAdded`, so a
heartbeat changes nothing), ours among them: `NodeFacts.readiness_taints` says whether a node is
still unverified (`nodesysctl.readiness`), and a taint of ours added or removed wakes the
policies as any other change of facts does.

Runs in its own thread (the client blocks); `on_update` is called from that thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from nodesysctl.backoff import Backoff
from nodesysctl.kube import WatchExpiredError
from nodesysctl.metrics import OPERATOR_METRICS, OperatorMetrics
from nodesysctl.planning import NodeFacts

logger = logging.getLogger(__name__)

LIST_PAGE = 100  # parsed Node bodies alive at once while listing
WATCH_SECONDS = 300
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A healthy watch hears from the API server at least when each watch request ends (every
# WATCH_SECONDS), and in between through events and bookmarks.
STALE_SECONDS = 2 * WATCH_SECONDS


class NodeWatchStaleError(Exception):
    """The node watch has not heard from the API server for too long."""


@dataclasses.dataclass(frozen=True)
class NodesListed:
    """The complete set of Nodes (after a start-up or an expired watch): replaces the cache."""

    nodes: list[NodeFacts]


@dataclasses.dataclass(frozen=True)
class NodeChanged:
    facts: NodeFacts
    deleted: bool = False


NodeUpdate = NodesListed | NodeChanged


class NodeSource(Protocol):
    """Raw Nodes from the API (`nodesysctl.kube.Kube`): pages of a list, events of a watch."""

    def list_node_pages(self, page: int = ...) -> Iterator[Mapping[str, Any]]: ...

    def watch_nodes(self, version: str, timeout_seconds: int) -> Iterator[tuple[str, Any]]: ...


def list_node_facts(source: NodeSource, page: int = LIST_PAGE) -> tuple[list[NodeFacts], str]:
    """Every Node's facts and the list's resourceVersion, each page reduced as it arrives."""
    nodes: list[NodeFacts] = []
    version = ""
    for chunk in source.list_node_pages(page):
        nodes += [NodeFacts.from_body(item) for item in chunk.get("items") or ()]
        version = str((chunk.get("metadata") or {}).get("resourceVersion", ""))
        del chunk  # not kept alive while the next page is fetched and parsed
    return nodes, version


class NodeCache:
    """Every Node's facts by name; `apply` says whether anything a policy cares about changed."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeFacts] = {}

    def apply(self, update: NodeUpdate) -> set[str]:
        """Apply one update; returns the names of the Nodes whose facts changed or vanished.
        Idempotent: replaying a list or an event that is already known changes nothing."""
        if isinstance(update, NodesListed):
            listed = {facts.name: facts for facts in update.nodes}
            changed = {name for name in self.nodes if name not in listed}
            changed |= {name for name, facts in listed.items() if self.nodes.get(name) != facts}
            self.nodes = listed
            return changed
        name = update.facts.name
        if update.deleted:
            return {name} if self.nodes.pop(name, None) is not None else set()
        if self.nodes.get(name) == update.facts:
            return set()  # a heartbeat, or anything else we do not read
        self.nodes[name] = update.facts
        return {name}


class NodeWatch:
    """List, then watch, forever (until `stop`); every update goes to `on_update`."""

    def __init__(
        self,
        source: NodeSource,
        on_update: Callable[[NodeUpdate], None],
        *,
        page: int = LIST_PAGE,
        watch_seconds: int = WATCH_SECONDS,
        sleep: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: OperatorMetrics = OPERATOR_METRICS,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.on_update = on_update
        self.page = page
        self.watch_seconds = watch_seconds
        self.stopped = threading.Event()
        self.version: str | None = None  # where the watch resumes; None: list first
        self.listed = False
        self.clock = clock
        self.last_contact = clock()  # start-up counts: the first list gets its time
        # Waits between retries; returns True when stopped meanwhile (tests pass their own).
        self.sleep = sleep or self.stopped.wait

    def stop(self) -> None:
        self.stopped.set()

    def health(self, now: float | None = None) -> dict[str, Any]:
        """For the liveness probe; raises NodeWatchStaleError when the watch is stuck or the API
        server has been unreachable for STALE_SECONDS (the cache may be outdated)."""
        silent = (self.clock() if now is None else now) - self.last_contact
        if silent > STALE_SECONDS:
            raise NodeWatchStaleError(
                f"no answer from the API server to the node watch for {silent:.0f} s"
            )
        return {"listed": self.listed, "secondsSinceContact": round(silent, 1)}

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="node-watch", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        backoff = Backoff(FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
        while not self.stopped.is_set():
            failure: Exception | None = None
            try:
                if self.version is None:
                    nodes, self.version = list_node_facts(self.source, self.page)
                    self.on_update(NodesListed(nodes))
                    self.listed = True
                    self._heard()
                    logger.info("listed %d nodes at resourceVersion %s", len(nodes), self.version)
                started = self.clock()
                self._watch(self.version)
                self._heard()  # the server ended the watch: it answers
                if self.stopped.is_set():
                    return
                if self.clock() - started >= 1.0:
                    backoff.reset()
                    continue
                # A watch that ended at once: back off below rather than spin.
            except WatchExpiredError:
                logger.info("node watch expired at resourceVersion %s; listing again", self.version)
                self.version = None
                continue
            except Exception as exc:
                # The API server restarting, a dropped connection: resume from the last version.
                failure = exc
            delay = backoff.next_delay()
            if failure is not None:
                logger.warning("node watch failed (%s); retrying in %.0f s", failure, delay)
            if self.sleep(delay):
                return

    def _heard(self) -> None:
        """The API server answered: for the liveness probe and the metric."""
        self.last_contact = self.clock()
        self.metrics.node_watch_heard()

    def _watch(self, version: str) -> None:
        """Follow one watch request; `self.version` follows every event (to resume from)."""
        for kind, obj in self.source.watch_nodes(version, self.watch_seconds):
            if self.stopped.is_set():
                return
            self._heard()
            meta: Mapping[str, Any] = obj.get("metadata") or {}
            self.version = str(meta.get("resourceVersion") or self.version)
            if kind != "BOOKMARK":
                self.on_update(NodeChanged(NodeFacts.from_body(obj), deleted=kind == "DELETED"))
