"""What the simulated kubelet sees of its Nodes' health, from a watch of every Node.

A real kubelet reads its own Node every ``nodeStatusUpdateFrequency`` (10 s) and posts its
status again when it differs from what it would report, for instance after the node lifecycle
controller marked it ``Unknown`` because its heartbeats came late (a loaded machine). One
process serving 5000 nodes cannot read 5000 Nodes every 10 s on 2 cores; a watch of all Nodes
costs nothing while nothing changes: the simulated kubelet writes no Node status in steady
state (the Lease is the heartbeat), so the stream carries only what others change (the
operator's annotations, the controller's marks), and the first list comes in pages.

Only ``Unknown`` calls for a repost: it is the controller's mark (reason NodeStatusUnknown,
"Kubelet stopped posting node status"). ``False`` is what a kubelet itself reports for a node
that is alive but not ready, and no kubelet overrides its own report with ``True``.

The record of Ready changes (a node's Ready condition leaving ``True``) serves the
benchmark's node-health guard: it is the API's view, in the order the stream brought it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .list_watch import ListWatch

Json = dict[str, Any]

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
# Taints the node lifecycle controller puts on a node that is not Ready and takes off itself.
_HEALTH_TAINTS = (NOT_READY_TAINT, UNREACHABLE_TAINT)
_CHANGES_KEPT = 10_000
_LIST_PAGE = 500


@dataclass(frozen=True)
class NodeReadiness:
    """The Ready condition of a Node and the controller's health taints it carries."""

    ready: str  # the Ready condition's status: True, False, Unknown; "" without one
    reason: str = ""
    taints: tuple[str, ...] = ()  # of not-ready / unreachable, each key once

    @classmethod
    def of(cls, node: Json) -> NodeReadiness:
        ready: Json = next(
            (
                c
                for c in (node.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            {},
        )
        keys = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
        return cls(
            ready=str(ready.get("status", "")),
            reason=str(ready.get("reason", "")),
            taints=tuple(key for key in _HEALTH_TAINTS if key in keys),
        )

    @property
    def healthy(self) -> bool:
        """Ready and untainted: the scheduler places pods on it."""
        return self.ready == "True" and not self.taints

    def __str__(self) -> str:
        text = f"Ready={self.ready or 'missing'}"
        if self.reason:
            text += f" ({self.reason})"
        if self.taints:
            text += ", tainted " + ", ".join(self.taints)
        return text


@dataclass(frozen=True)
class ReadyChange:
    """A node's Ready condition left True (as the Node watch showed it)."""

    node: str
    ready: str
    reason: str
    at: float  # time.time() when the watch brought it

    def __str__(self) -> str:
        return f"{self.node}: Ready={self.ready or 'missing'} ({self.reason or 'no reason'})"


_NOT_SEEN = NodeReadiness("", "not seen by the node watch yet")


class ReadyWatch:
    """Keeps every Node's :class:`NodeReadiness`; calls ``on_marked_unknown(name)`` when a
    node's Ready condition turns Unknown (or is Unknown when first seen)."""

    def __init__(
        self,
        core: Any,
        stop: threading.Event,
        report_error: Callable[[str], None],
        on_marked_unknown: Callable[[str], None],
    ) -> None:
        self._on_marked_unknown = on_marked_unknown
        self._watch = ListWatch(
            core.list_node, "node watch", stop, report_error, self.on_event, page_size=_LIST_PAGE
        )
        self._lock = threading.Lock()
        self._seen: dict[str, NodeReadiness] = {}
        self._changes: deque[ReadyChange] = deque(maxlen=_CHANGES_KEPT)
        self.changes_total = 0

    def run(self) -> None:
        self._watch.run()

    def stop(self) -> None:
        self._watch.stop()

    def on_event(self, kind: str, node: Json) -> None:
        name = node["metadata"]["name"]
        if kind == "DELETED":
            with self._lock:
                self._seen.pop(name, None)
            return
        new = NodeReadiness.of(node)
        with self._lock:
            old = self._seen.get(name)
            self._seen[name] = new
            if old is not None and old.ready == "True" and new.ready != "True":
                self._changes.append(ReadyChange(name, new.ready, new.reason, time.time()))
                self.changes_total += 1
        if new.ready == "Unknown" and (old is None or old.ready != "Unknown"):
            self._on_marked_unknown(name)

    # ----------------------------------------------------------------- queries
    def readiness(self, name: str) -> NodeReadiness | None:
        """The node as the watch last showed it; None if not seen (yet)."""
        with self._lock:
            return self._seen.get(name)

    def unhealthy(self, names: Iterable[str]) -> dict[str, NodeReadiness]:
        """Those of ``names`` that are not Ready, tainted, or not seen by the watch yet."""
        with self._lock:
            found = {name: self._seen.get(name, _NOT_SEEN) for name in names}
        return {name: seen for name, seen in found.items() if not seen.healthy}

    def changes_since(self, at: float) -> list[ReadyChange]:
        """Ready changes the watch brought at or after ``at`` (``time.time()``), oldest first."""
        with self._lock:
            return [change for change in self._changes if change.at >= at]
