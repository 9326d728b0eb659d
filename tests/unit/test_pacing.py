"""Pass delays and the restart rate limit, on an injected clock (no waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nodesysctl.pacing import (
    BUSY_POLL_SECONDS,
    IDLE_POLL_SECONDS,
    RestartBudget,
    RestartLimiter,
    pass_delay,
)


@pytest.mark.parametrize(
    ("busy", "next_due_in", "delay"),
    [
        (True, None, BUSY_POLL_SECONDS),
        (True, 1.0, BUSY_POLL_SECONDS),  # a busy pass polls even when a recheck is due sooner
        (False, None, IDLE_POLL_SECONDS),
        (False, 42.0, 42.0),
        (False, 3600.0, IDLE_POLL_SECONDS),  # never sleeps longer than the idle poll
    ],
)
def test_delay_without_a_waiting_wave(busy: bool, next_due_in: float | None, delay: float) -> None:
    assert pass_delay(busy=busy, next_due_in=next_due_in, next_token_in=None) == delay


@pytest.mark.parametrize(
    ("busy", "next_due_in", "next_token_in", "delay"),
    [
        (False, None, 10.0, 10.0),  # the wave resumes when the next token is due
        (False, None, 0.0, 1.0),  # but never in a busy loop
        (False, None, 0.25, 1.0),
        (False, 5.0, 10.0, 5.0),  # a recheck due sooner still comes first
        (True, None, 10.0, BUSY_POLL_SECONDS),
        (False, None, 1000.0, IDLE_POLL_SECONDS),
    ],
)
def test_delay_with_a_rate_limited_wave(
    busy: bool, next_due_in: float | None, next_token_in: float, delay: float
) -> None:
    assert pass_delay(busy=busy, next_due_in=next_due_in, next_token_in=next_token_in) == delay


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_spends_its_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RestartLimiter(per_minute=6, burst=2, clock=clock)
    assert limiter.try_take()
    assert limiter.try_take()
    assert not limiter.try_take()
    assert limiter.seconds_until_token() == pytest.approx(10.0)
    clock.now += 4.0
    assert limiter.seconds_until_token() == pytest.approx(6.0)
    assert not limiter.try_take()
    clock.now += 6.0
    assert limiter.seconds_until_token() == 0.0
    assert limiter.try_take()
    assert not limiter.try_take()


def test_limiter_never_holds_more_than_its_burst() -> None:
    clock = FakeClock()
    limiter = RestartLimiter(per_minute=60, burst=2, clock=clock)
    clock.now += 3600.0
    assert [limiter.try_take() for _ in range(3)] == [True, True, False]


def test_a_limiter_without_a_rate_waits_at_most_the_idle_poll() -> None:
    limiter = RestartLimiter(per_minute=0, burst=1, clock=FakeClock())
    assert limiter.try_take()
    assert limiter.seconds_until_token() == IDLE_POLL_SECONDS


def test_take_up_to_takes_what_there_is() -> None:
    clock = [0.0]
    limiter = RestartLimiter(per_minute=60, burst=3, clock=lambda: clock[0])
    assert limiter.take_up_to(5) == 3
    assert limiter.take_up_to(1) == 0
    clock[0] = 2.0
    assert limiter.take_up_to(5) == 2


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_budget_is_a_bucket_of_per_hour_tokens_that_refills_per_hour() -> None:
    budget = RestartBudget(per_hour=6)  # one token every 10 minutes
    assert budget.available(NOW) == 6
    spent = budget.take(4, NOW)
    assert spent.full_at == NOW + timedelta(minutes=40)
    assert spent.available(NOW) == 2
    assert spent.available(NOW + timedelta(minutes=10)) == 3
    empty = spent.take(2, NOW)
    assert empty.available(NOW) == 0
    assert empty.seconds_until_token(NOW) == 599.0  # the stored second is not a token
    assert empty.available(NOW + timedelta(minutes=10)) == 1
    assert empty.available(NOW + timedelta(hours=2)) == 6


def test_the_budget_survives_a_round_trip_through_the_status_and_never_grows() -> None:
    spent = RestartBudget(per_hour=7).take(3, NOW + timedelta(microseconds=1))
    status = spent.as_status(NOW)
    assert status["perHour"] == 7
    reloaded = RestartBudget.from_status(status, 7)
    assert reloaded.full_at is not None
    assert spent.full_at is not None
    assert reloaded.full_at >= NOW + timedelta(seconds=3 * 3600 / 7)  # rounded up, not down
    assert reloaded.available(NOW) == 4
    # Missing or unreadable: full. An older status than our own last write: ours counts.
    assert RestartBudget.from_status(None, 7).available(NOW) == 7
    assert RestartBudget.from_status({"fullAt": "soon"}, 7).available(NOW) == 7
    assert RestartBudget(7).later(reloaded).available(NOW) == 4
    assert reloaded.later(RestartBudget(7)).available(NOW) == 4
