"""The benchmark's node-health guard: no measurement starts with, or runs on with, a sick node.

Why: in the issue-12 run 420 of 1000 simulated nodes went NotReady during a measurement
(their Leases came late), the operator failed 57 of them and halted, and the run went on for
29 minutes producing a number that meant nothing. Now every measurement is framed by:

- :meth:`NodeHealth.wait_healthy` before it, instead of counting on the grace period: every
  node Ready and without the node lifecycle controller's ``not-ready``/``unreachable`` taint,
  no Lease older than the budget;
- :meth:`NodeHealth.check` during it (cheap: called from every poll of the measurement): a
  node whose Ready condition left True (the simulated kubelet's Node watch sees every change),
  or a Lease older than half the grace period (the heartbeats fall behind: these 2 cores do
  not hold this many nodes), raises :class:`NodeHealthError` with the reason;
- :meth:`NodeHealth.finish` after it: the same, plus the controller's own ``NodeNotReady``
  Events since the start (a change the watch could have missed while it listed again).

The size is then stopped and its reason recorded and printed (``bench.__main__``); larger
sizes are not run (they would only be worse).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from devcluster.waiting import WaitTimeoutError, wait_for

from .harness import BenchCluster

# A Lease older than this share of the grace period stops the measurement: half the margin
# is gone, and the next hiccup would make the controller mark nodes Unknown.
LEASE_BUDGET_FRACTION = 0.5
_LEASE_CHECK_SECONDS = 2.0  # the heartbeat process is asked at most this often
_SHOWN = 5  # nodes named in a reason


class RunStoppedError(RuntimeError):
    """A measurement was stopped rather than run on: the reason is the message."""


class NodeHealthError(RunStoppedError):
    """A node is not healthy (or the heartbeats fall behind)."""


class NodeHealth:
    def __init__(self, bench: BenchCluster) -> None:
        self.bench = bench
        self.grace_seconds = bench.cluster.control_plane.node_monitor_grace_seconds
        self.lease_budget_seconds = LEASE_BUDGET_FRACTION * self.grace_seconds
        self._since = time.time()
        self._errors_seen = 0
        self._next_lease_check = 0.0

    @property
    def _kubelet(self) -> Any:
        return self.bench.cluster.kubelet

    # ----------------------------------------------------------------- before
    def wait_healthy(self, names: list[str], timeout: float = 300.0) -> float:
        """Wait until every one of ``names`` is Ready and untainted (the controller takes the
        ``not-ready`` taint off a new node within seconds); returns the seconds waited."""
        limit = timeout
        start = time.monotonic()
        last: dict[str, Any] = {}

        def healthy() -> bool:
            self._check_leases(force=True)
            unhealthy = self._kubelet.readiness.unhealthy(names)
            last.update(unhealthy=unhealthy)
            return not unhealthy

        try:
            wait_for(healthy, timeout=limit, what="every node Ready", interval=1.0,
                     fatal=(NodeHealthError,))  # fmt: skip
        except WaitTimeoutError:
            unhealthy = last.get("unhealthy", {})
            shown = ", ".join(f"{n}: {s}" for n, s in list(unhealthy.items())[:_SHOWN])
            raise NodeHealthError(
                f"{len(unhealthy)} of {len(names)} nodes not Ready after {limit:.0f} s"
                f"{' (' + shown + ')' if shown else ''}"
            ) from None
        return time.monotonic() - start

    # ----------------------------------------------------------------- during
    def arm(self) -> None:
        """A measurement starts: changes and Lease stats count from now."""
        self._since = time.time()
        self._errors_seen = len(self.bench.cluster.kubelet_errors)
        self._kubelet.lease_stats(reset=True)
        self._next_lease_check = 0.0

    def check(self) -> None:
        """Raise :class:`NodeHealthError` if a node left Ready since :meth:`arm`, or the
        heartbeats fall behind."""
        changes = self._kubelet.readiness.changes_since(self._since)
        if changes:
            shown = "; ".join(str(change) for change in changes[:_SHOWN])
            raise NodeHealthError(
                f"{len({c.node for c in changes})} nodes went NotReady during the "
                f"measurement ({shown})"
            )
        self._check_leases()

    def sleep(self, seconds: float) -> None:
        """A measurement window of ``seconds``, checked every second."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            time.sleep(min(1.0, left))
        self.check()

    def _check_leases(self, *, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_lease_check:
            return
        self._next_lease_check = time.monotonic() + _LEASE_CHECK_SECONDS
        errors = self.bench.cluster.kubelet_errors[self._errors_seen :]
        gone = [e for e in errors if "heartbeat process exited" in e]
        if gone:
            raise NodeHealthError(f"the simulated kubelet's {gone[0]}")
        stats = self._kubelet.lease_stats()
        worst = max(stats.oldest_lease_age_seconds, stats.max_gap_seconds)
        if worst > self.lease_budget_seconds:
            raise NodeHealthError(
                f"Lease renewals fell behind: a Lease went {worst:.0f} s without renewal, more "
                f"than {LEASE_BUDGET_FRACTION:.0%} of the {self.grace_seconds:.0f} s grace "
                f"period (renew period {stats.period_seconds:.0f} s, {stats.parallelism} "
                f"workers, p99 latency {stats.p99_latency_ms:.0f} ms): this machine does not "
                f"hold {stats.nodes} nodes"
            )

    # ----------------------------------------------------------------- after
    def finish(self) -> dict[str, Any]:
        """The last check, with the controller's NodeNotReady Events; what to record."""
        self.check()
        events = self.node_not_ready_events()
        if events:
            raise NodeHealthError(
                f"the node lifecycle controller reported {len(events)} nodes NotReady during "
                f"the measurement ({', '.join(sorted(events)[:_SHOWN])})"
            )
        return {
            "leases": self._kubelet.lease_stats().as_dict(),
            "lease_budget_seconds": self.lease_budget_seconds,
            "ready_changes": 0,
            "node_not_ready_events": 0,
        }

    def node_not_ready_events(self) -> set[str]:
        """Nodes the controller reported NotReady (Event reason NodeNotReady) since arm()."""
        core: Any = client.CoreV1Api(self.bench.api)
        resp = core.list_namespaced_event(
            "default",
            field_selector="involvedObject.kind=Node,reason=NodeNotReady",
            _preload_content=False,
        )
        since = datetime.fromtimestamp(self._since, UTC).replace(microsecond=0)
        nodes = set()
        for event in json.loads(resp.data)["items"]:
            stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
            if stamp and datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= since:
                nodes.add(event["involvedObject"]["name"])
        return nodes
