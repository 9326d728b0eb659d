"""When each node's Lease is renewed: a fixed period per node, the nodes spread evenly over it.

Pure (the clock is passed in), so the scheduling is unit-tested without a cluster.

Why this shape: the node lifecycle controller marks a node ``Ready=Unknown`` once it has seen
no heartbeat for ``--node-monitor-grace-period``; what counts is the longest gap between two
renewals of *one* node, whatever the number of nodes. So the period is fixed (a fraction of
the grace period, chosen by the caller) and never stretched with the node count, and every
node has its own phase inside the period: node *i* is renewed at ``epoch + phase_i + k *
period``. The phases follow the golden-ratio sequence, which spreads any number of nodes
evenly over the period whenever they register (a burst of 1000 registrations in 5 s does not
become a burst of 1000 renewals every period). A node's first renewal is its next phase point
after registration, at most one period after the Lease was created (creating it is the first
heartbeat), never "after the current pass over all other nodes", as a single loop over the
node list did.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

_GOLDEN = (math.sqrt(5) - 1) / 2  # 0.618...: consecutive multiples mod 1 stay evenly spread


@dataclass(frozen=True)
class LeaseStats:
    """The Lease renewals of one window (since the kubelet started or the last reset)."""

    nodes: int
    period_seconds: float
    parallelism: int
    renewals: int
    failures: int
    # Longest time between two renewals of one node (request sent to request sent), the
    # creation of its Lease counting as the first: what the grace period must cover.
    max_gap_seconds: float
    # The oldest renewal of any node now (nodes whose heartbeats are paused left out).
    oldest_lease_age_seconds: float
    # How late a renewal was sent after its due time, at worst (the workers fell behind).
    max_late_seconds: float
    mean_latency_ms: float
    p50_latency_ms: float
    p99_latency_ms: float
    max_latency_ms: float
    # Nodes whose Lease the renewal workers have not renewed yet (only created).
    never_renewed: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "nodes": self.nodes,
            "period_seconds": round(self.period_seconds, 2),
            "parallelism": self.parallelism,
            "renewals": self.renewals,
            "failures": self.failures,
            "max_gap_seconds": round(self.max_gap_seconds, 2),
            "oldest_lease_age_seconds": round(self.oldest_lease_age_seconds, 2),
            "max_late_seconds": round(self.max_late_seconds, 2),
            "mean_latency_ms": round(self.mean_latency_ms, 1),
            "p50_latency_ms": round(self.p50_latency_ms, 1),
            "p99_latency_ms": round(self.p99_latency_ms, 1),
            "max_latency_ms": round(self.max_latency_ms, 1),
            "never_renewed": self.never_renewed,
        }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``sorted_values`` lie (0 for none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


class RenewSchedule:
    """Due times of every node's next renewal (not thread-safe: the caller holds a lock)."""

    def __init__(self, period: float, epoch: float) -> None:
        if period <= 0:
            raise ValueError(f"the renew period must be positive, got {period}")
        self.period = period
        self._epoch = epoch
        self._registered = 0  # nodes ever added: the index into the golden-ratio sequence
        self._phase: dict[str, float] = {}
        self._due: dict[str, float] = {}  # the live entry of each node in the heap
        self._heap: list[tuple[float, str]] = []  # may hold stale entries, skipped on pop

    def __len__(self) -> int:
        return len(self._phase)

    def __contains__(self, name: object) -> bool:
        return name in self._phase

    def add(self, name: str, now: float) -> float:
        """Schedule a new node; returns its first due time (its next phase point)."""
        if name not in self._phase:
            self._phase[name] = (self._registered * _GOLDEN) % 1.0 * self.period
            self._registered += 1
        return self._set(name, self.next_phase_point(name, now))

    def remove(self, name: str) -> None:
        self._phase.pop(name, None)
        self._due.pop(name, None)

    def due_now(self, name: str, now: float) -> None:
        """Renew this node as soon as a worker is free (e.g. the controller marked it
        Unknown). Its phase stays: the renewal after is back on its phase point."""
        if name in self._phase:
            self._set(name, now)

    def next_phase_point(self, name: str, after: float) -> float:
        """The node's first phase point strictly after ``after``."""
        base = self._epoch + self._phase[name]
        point = base + max(math.floor((after - base) / self.period) + 1, 0) * self.period
        # Rounding can land on ``after`` itself (a point computed from a point): one more.
        return point if point > after else point + self.period

    def reschedule(self, name: str, now: float) -> float | None:
        """After a renewal (sent at ``now``): the next one at the next phase point, so the
        gap is at most one period; a renewal that was late by more than a period is not
        followed by a burst of catch-ups."""
        if name not in self._phase:
            return None
        asked = self._due.get(name)
        if asked is not None:  # due_now() while it was being renewed: that stays first
            return asked
        return self._set(name, self.next_phase_point(name, now))

    def pop_due(self, now: float) -> tuple[str, float] | None:
        """The most overdue node (and its due time) if one is due at ``now``; it is out of
        the schedule until :meth:`reschedule` or :meth:`due_now` puts it back."""
        while self._heap and self._heap[0][0] <= now:
            due, name = heapq.heappop(self._heap)
            if self._due.get(name) == due:
                del self._due[name]
                return name, due
        return None

    def next_due(self) -> float | None:
        """The earliest due time in the schedule (stale entries dropped)."""
        while self._heap:
            due, name = self._heap[0]
            if self._due.get(name) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def _set(self, name: str, due: float) -> float:
        self._due[name] = due
        heapq.heappush(self._heap, (due, name))
        return due
