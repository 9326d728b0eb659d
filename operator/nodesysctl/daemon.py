"""One policy's daemon, minus Kopf: a pass, then a wait until the next one, forever.

The Kopf daemon (`nodesysctl.handlers.reconcile_policy`) only builds a `PolicyDaemon` from its
arguments and runs it; the loop's decisions (what a pass records, how long to wait, what a
wake-up does, how failed passes back off) are here, unit-tested with a fake reconciler.
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

from nodesysctl.backoff import Backoff
from nodesysctl.metrics import OPERATOR_METRICS, OperatorMetrics
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, PolicyRanges
from nodesysctl.reconcile import PassResult, Snapshot
from nodesysctl.state import OperatorState

logger = logging.getLogger(__name__)

# A failed pass is retried after 5 s, then 10, 20, ... at most 5 min, each up to 20% sooner at
# random (policies that failed together, as in an API server outage, spread out); a successful
# pass starts over. Only an edit of the policy cuts the wait short (docs/reliability.md).
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
RETRY_JITTER = 0.2
MAX_COALESCE_SECONDS = 2.0
ERROR_TEXT_LIMIT = 300  # characters of the error in the failure's log line


class Reconciler(Protocol):
    """The blocking pass (`nodesysctl.reconcile.PolicyReconciler`); run in a worker thread."""

    def run_once(self, snap: Snapshot, now: datetime) -> PassResult: ...


@dataclasses.dataclass(frozen=True)
class NextPass:
    """When the next pass runs: after `wait` seconds or at a wake-up, whichever comes first,
    then `coalesce` seconds later still. After a failed pass (`failed_generation` set) only a
    wake-up that finds the policy edited (a newer generation) ends the wait early."""

    wait: float
    coalesce: float = 0.0
    failed_generation: int | None = None


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
        policies: Mapping[str, Iterable[PolicyRanges]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        metrics: OperatorMetrics = OPERATOR_METRICS,
    ) -> None:
        self.state = state
        self.reconciler = reconciler
        self.name = name
        self.uid = uid
        self.body = body
        self.jobs = jobs
        self.pod_outcomes = pod_outcomes
        self.policies = policies or {}
        self.clock = clock
        self.backoff = backoff or Backoff(
            RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, jitter=RETRY_JITTER
        )
        self.wakeup = state.wakeup(name)
        self.metrics = metrics

    async def run(self) -> None:
        # A pass on a partly listed Node set would take a running check of a not-yet-seen Node
        # for one of a deleted Node: plan only from the complete list.
        await self.state.nodes_listed.wait()
        self.metrics.seed_policy(self.name)  # its series at zero before anything counts
        while True:
            await self.wait(await self.run_one_pass())

    async def run_one_pass(self) -> NextPass:
        """Snapshot on the event loop, run the pass in a worker thread, record what it did."""
        self.wakeup.clear()  # a wake-up from now on asks for another pass
        started = self.clock()
        snap = self.state.snapshot(
            self.name, self.uid, self.body, self.jobs, self.pod_outcomes, self.policies
        )
        try:
            result = await asyncio.to_thread(self.reconciler.run_once, snap, datetime.now(UTC))
        except Exception as exc:
            self.metrics.record_pass(self.name, self.clock() - started, failed=True)
            # An API error mid-pass (apiserver restarting, a conflict): every step of a
            # pass is idempotent, so the next pass simply starts over. Kopf's own daemon
            # restart would wait a minute; a short first retry keeps the rollout moving, the
            # backoff keeps a lasting failure from hammering the API server.
            delay = self.backoff.next_delay()
            failures = self.backoff.failures
            # One line per failure; the traceback with the first of a series (a bug shows
            # where it is at once), for the later ones only at debug level.
            logger.warning(
                "policy %s: reconcile pass failed (%d in a row): %s; retrying in %.0f s",
                self.name, failures, _one_line(exc), delay, exc_info=failures == 1,
            )  # fmt: skip
            if failures > 1:
                logger.debug("policy %s: pass failure %d", self.name, failures, exc_info=True)
            return NextPass(delay, failed_generation=snap.generation)
        if self.backoff.failures:
            logger.info(
                "policy %s: reconcile pass succeeded after %d failures",
                self.name, self.backoff.failures,
            )  # fmt: skip
        self.backoff.reset()
        self.metrics.record_pass(self.name, self.clock() - started, failed=False)
        self.state.record_pass(self.name, result)
        # Coalesce bursts (a restarted operator sees every Node once, each a wake-up): wait
        # as long as the last pass took, so passes never use more than half of the time.
        return NextPass(result.delay, min(self.clock() - started, MAX_COALESCE_SECONDS))

    async def wait(self, next_pass: NextPass) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(next_pass.wait):
                await self.wakeup.wait()
                while (
                    next_pass.failed_generation is not None
                    and next_pass.failed_generation == self._generation()
                ):
                    # Backing off: Node changes, Job events and the other policies' passes
                    # are no reason to retry sooner (a busy cluster wakes us every second).
                    self.wakeup.clear()
                    await self.wakeup.wait()
        await asyncio.sleep(next_pass.coalesce)

    def _generation(self) -> int:
        return int((self.body.get("metadata") or {}).get("generation") or 0)


def _one_line(exc: BaseException) -> str:
    """The error in one log line: ApiException's text alone spans headers and body."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."
