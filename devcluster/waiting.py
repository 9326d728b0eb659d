"""Polling with a deadline: the one way tests and the dev cluster wait for something."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError):
    """The condition did not hold before the deadline."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns a truthy value and return that value.

    Exceptions raised by ``condition`` count as "not yet" (the API server may still be
    starting), except those of the ``fatal`` types, which propagate at once; the last one is
    reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = condition()
        except fatal:
            raise
        except Exception as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)
