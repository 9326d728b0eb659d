"""Pacing: when a policy's next pass runs, and how fast workloads may be restarted.

No client and no Kopf here: `pass_delay` is arithmetic on what a pass found, and
`RestartLimiter` is a token bucket whose clock is injected, so both are unit-tested without
waiting. `nodesysctl.reconcile` asks them; the Kopf daemon sleeps for the delay a pass returns
(or until an event wakes it sooner).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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

    def seconds_until_token(self) -> float:
        """How long until `try_take` can succeed (0 if it can now)."""
        with self.lock:
            self._refill()
            if self.tokens >= 1.0:
                return 0.0
            return (1.0 - self.tokens) / self.rate if self.rate > 0 else IDLE_POLL_SECONDS
