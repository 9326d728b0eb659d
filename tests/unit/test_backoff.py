"""The shared backoff: doubling, capped, jitter only ever shortening, reset."""

from __future__ import annotations

import pytest

from nodesysctl.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(5.0, 300.0)
    assert [backoff.next_delay() for _ in range(9)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff.failures == 9
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 5.0


def test_jitter_shortens_by_at_most_its_fraction() -> None:
    draws = iter([0.0, 0.5, 0.999])
    backoff = Backoff(10.0, 40.0, jitter=0.2, random=lambda: next(draws))
    assert backoff.next_delay() == 10.0
    assert backoff.next_delay() == pytest.approx(18.0)  # 20 shortened by 10%
    assert backoff.next_delay() == pytest.approx(40 * (1 - 0.2 * 0.999))
    assert Backoff(300.0, 300.0, jitter=0.2).next_delay() <= 300.0  # the cap still holds


def test_a_failure_that_never_ends_stays_at_the_cap() -> None:
    backoff = Backoff(1.0, 30.0)
    for _ in range(5000):  # 2.0 ** 5000 would overflow a float
        delay = backoff.next_delay()
    assert delay == 30.0


@pytest.mark.parametrize(
    ("initial", "cap", "jitter"), [(0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, 1.0)]
)
def test_nonsense_is_refused(initial: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(initial, cap, jitter=jitter)
