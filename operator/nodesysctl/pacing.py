"""Pacing: when a policy's next pass runs, and how fast workloads may be restarted.

No client and no Kopf here: `pass_delay` is arithmetic on what a pass found, and
`RestartLimiter` is a token bucket whose clock is injected, so both are unit-tested without
waiting. `nodesysctl.reconcile` asks them; the Kopf daemon sleeps for the delay a pass returns
(or until an event wakes it sooner).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from nodesysctl.planning import format_time, parse_time

BUSY_POLL_SECONDS = 5.0  # while checks run; job/pod events usually wake us sooner
IDLE_POLL_SECONDS = 300.0  # upper bound on sleeping when nothing is due
INVALID_POLL_SECONDS = 3600.0  # an invalid spec waits for an edit (edits wake us at once)
MIN_WAVE_WAIT_SECONDS = 1.0  # a rate-limited wave never asks for a busy loop


def pass_delay(*, busy: bool, next_due_in: float | None, next_token_in: float | None) -> float:
    """Seconds until the next pass of a valid policy.

    `busy`: checks are running or were just started; `next_due_in`: seconds until the next
    recheck is due (None if none is scheduled); `next_token_in`: seconds until the restart
    limiter has a token, when the rate limit cut a restart wave short (else None).
    """
    delay = BUSY_POLL_SECONDS if busy else min(next_due_in or IDLE_POLL_SECONDS, IDLE_POLL_SECONDS)
    if next_token_in is not None:
        # Nothing else wakes us for it (workloads are not watched): without this the rest
        # of the wave waited up to IDLE_POLL_SECONDS.
        delay = min(delay, max(MIN_WAVE_WAIT_SECONDS, next_token_in))
    return delay


class RestartLimiter:
    """Cluster-wide token bucket for workload restarts (shared by all policies).

    Restart storms are how remediation tools hurt clusters; this caps them no matter how
    many nodes are remediated at once.
    """

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()
        self.lock = threading.Lock()

    def _refill(self) -> None:
        """Add the tokens earned since the last call (the caller holds the lock)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self) -> bool:
        with self.lock:
            self._refill()
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False

    def take_up_to(self, count: int) -> int:
        """Take as many tokens as there are, at most `count`; how many were taken."""
        with self.lock:
            self._refill()
            taken = max(0, min(count, int(self.tokens)))
            self.tokens -= taken
            return taken

    def seconds_until_token(self) -> float:
        """How long until `try_take` can succeed (0 if it can now)."""
        with self.lock:
            self._refill()
            if self.tokens >= 1.0:
                return 0.0
            return (1.0 - self.tokens) / self.rate if self.rate > 0 else IDLE_POLL_SECONDS


@dataclasses.dataclass(frozen=True)
class RestartBudget:
    """One policy's restart budget (`spec.restart.maxPerHour`): a token bucket that holds
    `per_hour` tokens and earns `per_hour` an hour, written as one moment (GCRA's theoretical
    arrival time): `full_at`, when the bucket is full again. Its state is the policy status's
    `restartBudget`, so an operator that restarts, or a standby that takes over, goes on from
    what was spent instead of a full bucket.

    The pass takes the tokens, writes the new `full_at`, and only then restarts: an operator
    killed in between has spent tokens for restarts it did not make (fewer, never more).
    """

    per_hour: int
    full_at: datetime | None = None

    @property
    def interval(self) -> float:
        """Seconds per token earned."""
        return 3600.0 / self.per_hour

    def _debt(self, now: datetime) -> float:
        if self.full_at is None:
            return 0.0
        return max(0.0, (self.full_at - now).total_seconds())

    def available(self, now: datetime) -> int:
        # `full_at` is stored rounded up to the second: that second is not a spent token.
        spent = math.ceil(max(0.0, self._debt(now) - 1.0) / self.interval - 1e-9)
        return max(0, self.per_hour - spent)

    def take(self, count: int, now: datetime) -> RestartBudget:
        """`count` tokens fewer (at most `available(now)`; the caller checks)."""
        start = now + timedelta(seconds=self._debt(now))
        full = start + timedelta(seconds=count * self.interval)
        # Whole seconds, rounded up, as the status holds it: never more tokens after a reload.
        rounded = full.replace(microsecond=0) + timedelta(seconds=1 if full.microsecond else 0)
        return dataclasses.replace(self, full_at=rounded)

    def seconds_until_token(self, now: datetime) -> float:
        """How long until `available` is at least 1 (0 if it is now)."""
        if self.available(now) >= 1:
            return 0.0
        return max(0.0, self._debt(now) - 1.0 - (self.per_hour - 1) * self.interval)

    def later(self, other: RestartBudget | None) -> RestartBudget:
        """The one of the two that has spent more (a status read before our own last write)."""
        if other is None or other.full_at is None:
            return self
        if self.full_at is None or other.full_at > self.full_at:
            return dataclasses.replace(self, full_at=other.full_at)
        return self

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None, per_hour: int) -> RestartBudget:
        """The budget as `status.restartBudget` says (full when it is missing or unreadable)."""
        text = (status or {}).get("fullAt")
        try:
            return cls(per_hour, parse_time(str(text)) if text else None)
        except ValueError:
            return cls(per_hour)

    def as_status(self, now: datetime) -> dict[str, Any]:
        return {
            "perHour": self.per_hour,
            "remaining": self.available(now),
            "fullAt": format_time(self.full_at or now),
        }
