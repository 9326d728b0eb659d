"""Exponential backoff with a cap and optional jitter, shared by every retry loop.

Pure: the random source is injected, so tests pin the jitter. client-go's reflector and
controller-runtime's workqueue back off the same way (double per failure, capped, reset once
healthy); jitter keeps loops that failed together (an API server restart fails them all) from
retrying in lockstep.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable


class Backoff:
    """`next_delay()` after each failure (initial, doubled each time, at most `cap`), shortened
    by up to `jitter` (a fraction) at random; `reset()` after a success."""

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 < initial <= cap or factor < 1 or not 0 <= jitter < 1:
            raise ValueError(f"bad backoff: {initial=} {cap=} {factor=} {jitter=}")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.random = random
        self.failures = 0  # since the last reset
        self._next = initial

    def next_delay(self) -> float:
        """How long to wait after this failure; the following one waits longer."""
        delay = self._next
        # Grown step by step, never as initial * factor ** failures: that overflows a float
        # after ~1000 failures, a few days of an unreachable API server at the cap.
        self._next = min(self._next * self.factor, self.cap)
        self.failures += 1
        # Only ever shorter, so `cap` stays a real upper bound.
        return delay * (1.0 - self.jitter * self.random())

    def reset(self) -> None:
        self.failures = 0
        self._next = self.initial
