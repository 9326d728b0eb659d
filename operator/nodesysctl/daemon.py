"""One policy's daemon, minus Kopf: a pass, then a wait until the next one, forever.

The Kopf daemon (`nodesysctl.handlers.reconcile_policy`) only builds a `PolicyDaemon` from its
arguments and runs it; the loop's decisions (what a pass records, how long to wait, what a
wake-up does) are here, unit-tested with a fake reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts
from nodesysctl.reconcile import PassResult, Snapshot
from nodesysctl.state import OperatorState

logger = logging.getLogger(__name__)

PASS_RETRY_SECONDS = 5.0
MAX_COALESCE_SECONDS = 2.0


class Reconciler(Protocol):
    """The blocking pass (`nodesysctl.reconcile.PolicyReconciler`); run in a worker thread."""

    def run_once(self, snap: Snapshot, now: datetime) -> PassResult: ...


@dataclasses.dataclass(frozen=True)
class NextPass:
    """When the next pass runs: after `wait` seconds or at a wake-up, whichever comes first,
    then `coalesce` seconds later still."""

    wait: float
    coalesce: float = 0.0


class PolicyDaemon:
    """The loop of one policy. `body` and the indexes are Kopf's live views: each pass reads
    them anew."""

    def __init__(
        self,
        state: OperatorState,
        reconciler: Reconciler,
        name: str,
        uid: str,
        body: Mapping[str, Any],
        jobs: Mapping[str, Iterable[JobFacts]],
        pod_outcomes: Mapping[str, Iterable[PodOutcome]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.reconciler = reconciler
        self.name = name
        self.uid = uid
        self.body = body
        self.jobs = jobs
        self.pod_outcomes = pod_outcomes
        self.clock = clock
        self.wakeup = state.wakeup(name)

    async def run(self) -> None:
        # A pass on a partly listed Node set would take a running check of a not-yet-seen Node
        # for one of a deleted Node: plan only from the complete list.
        await self.state.nodes_listed.wait()
        try:
            while True:
                await self.wait(await self.run_one_pass())
        finally:
            self.state.drop_ranges(self.name)

    async def run_one_pass(self) -> NextPass:
        """Snapshot on the event loop, run the pass in a worker thread, record what it did."""
        self.wakeup.clear()  # a wake-up from now on asks for another pass
        started = self.clock()
        snap = self.state.snapshot(self.name, self.uid, self.body, self.jobs, self.pod_outcomes)
        try:
            result = await asyncio.to_thread(self.reconciler.run_once, snap, datetime.now(UTC))
        except Exception:
            # An API error mid-pass (apiserver restarting, a conflict): every step of a
            # pass is idempotent, so the next pass simply starts over. Kopf's own daemon
            # restart would wait a minute; a short retry keeps the rollout moving.
            logger.exception("policy %s: reconcile pass failed; retrying", self.name)
            return NextPass(PASS_RETRY_SECONDS)
        self.state.record_pass(self.name, result)
        # Coalesce bursts (a restarted operator sees every Node once, each a wake-up): wait
        # as long as the last pass took, so passes never use more than half of the time.
        return NextPass(result.delay, min(self.clock() - started, MAX_COALESCE_SECONDS))

    async def wait(self, next_pass: NextPass) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=next_pass.wait)
        await asyncio.sleep(next_pass.coalesce)
