"""Maintenance-window arithmetic on an injected clock: days, crossing midnight, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodesysctl.api import InvalidPolicy, MaintenanceWindow, parse_spec
from nodesysctl.windows import Window, local_instant

BERLIN = "Europe/Berlin"


def window(**fields: Any) -> Window:
    return Window.from_spec(MaintenanceWindow.model_validate(fields))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# 2026-11-30 is a Monday.
def test_a_same_day_window_is_open_from_start_to_end_excluded() -> None:
    w = window(start="09:00", end="17:00")
    assert not w.is_open(utc("2026-11-30T08:59:59"))
    assert w.is_open(utc("2026-11-30T09:00:00"))
    assert w.is_open(utc("2026-11-30T16:59:59"))
    assert not w.is_open(utc("2026-11-30T17:00:00"))
    assert w.next_opening(utc("2026-11-30T17:00:00")) == utc("2026-12-01T09:00:00")
    assert w.next_closing(utc("2026-11-30T10:00:00")) == utc("2026-11-30T17:00:00")
    assert w.next_closing(utc("2026-11-30T18:00:00")) is None


def test_a_window_crossing_midnight_belongs_to_the_day_it_opens() -> None:
    w = window(days=["Friday"], start="22:00", end="04:00")
    # Friday 2026-12-04 22:00 to Saturday 04:00.
    assert w.is_open(utc("2026-12-04T23:30:00"))
    assert w.is_open(utc("2026-12-05T03:59:00"))
    assert not w.is_open(utc("2026-12-05T04:00:00"))
    # Saturday night is not Friday's: closed, and Friday morning's 00:00-04:00 is Thursday's.
    assert not w.is_open(utc("2026-12-05T23:00:00"))
    assert not w.is_open(utc("2026-12-04T02:00:00"))
    assert w.next_closing(utc("2026-12-05T01:00:00")) == utc("2026-12-05T04:00:00")
    assert w.next_opening(utc("2026-12-05T01:00:00")) == utc("2026-12-11T22:00:00")


def test_only_the_listed_days_open() -> None:
    w = window(days=["Tuesday", "Thursday"], start="01:00", end="02:00")
    opened = [
        day
        for day in range(7)
        if w.is_open(utc("2026-11-30T01:30:00") + timedelta(days=day))  # Monday + day
    ]
    assert opened == [1, 3]
    assert w.next_opening(utc("2026-11-30T00:00:00")) == utc("2026-12-01T01:00:00")
    # While open, the next opening is the one after the current occurrence.
    assert w.next_opening(utc("2026-12-01T01:30:00")) == utc("2026-12-03T01:00:00")


def test_the_time_zone_places_the_window() -> None:
    w = window(start="22:00", end="23:00", timeZone=BERLIN)  # CET, UTC+1, in winter
    assert w.is_open(utc("2026-11-30T21:30:00"))
    assert not w.is_open(utc("2026-11-30T22:30:00"))
    summer = utc("2026-07-01T20:30:00")  # 22:30 CEST
    assert w.is_open(summer)


def test_spring_forward_a_window_inside_the_gap_does_not_open_that_day() -> None:
    # 2026-03-29 02:00 CET the clocks jump to 03:00 CEST (01:00 UTC).
    w = window(start="02:00", end="03:00", timeZone=BERLIN)
    day = [utc("2026-03-29T00:00:00") + timedelta(minutes=m) for m in range(0, 180, 5)]
    assert not any(w.is_open(moment) for moment in day)
    # The day before and the day after it opens as usual (CET then CEST).
    assert w.is_open(utc("2026-03-28T01:30:00"))
    assert w.is_open(utc("2026-03-30T00:30:00"))
    assert w.next_opening(utc("2026-03-28T03:00:00")) == utc("2026-03-30T00:00:00")


def test_spring_forward_a_window_straddling_the_gap_is_shorter_by_the_jump() -> None:
    w = window(start="01:30", end="03:30", timeZone=BERLIN)
    opening = w.current(utc("2026-03-29T00:45:00"))
    assert opening is not None
    assert (opening.opens, opening.closes) == (
        utc("2026-03-29T00:30:00"),
        utc("2026-03-29T01:30:00"),
    )


def test_a_start_in_the_gap_opens_when_the_clock_jumps_over_it() -> None:
    w = window(start="02:30", end="04:00", timeZone=BERLIN)
    assert w.next_opening(utc("2026-03-28T23:00:00")) == utc("2026-03-29T01:00:00")
    assert local_instant(
        datetime(2026, 3, 29).date(), datetime(2026, 1, 1, 2, 30).time(), w.zone
    ) == utc("2026-03-29T01:00:00")


def test_fall_back_a_repeated_hour_is_open_for_both_passes_of_the_clock() -> None:
    # 2026-10-25 03:00 CEST the clocks go back to 02:00 CET (01:00 UTC): 02:xx happens twice.
    w = window(start="02:00", end="03:00", timeZone=BERLIN)
    opening = w.current(utc("2026-10-25T00:30:00"))  # 02:30 CEST, the first pass
    assert opening is not None
    assert (opening.opens, opening.closes) == (
        utc("2026-10-25T00:00:00"),
        utc("2026-10-25T02:00:00"),
    )
    assert w.is_open(utc("2026-10-25T01:30:00"))  # 02:30 CET, the second pass


def test_fall_back_a_window_ending_in_the_repeated_hour_ends_at_its_first_pass() -> None:
    w = window(start="01:00", end="02:30", timeZone=BERLIN)
    assert w.next_closing(utc("2026-10-24T23:30:00")) == utc("2026-10-25T00:30:00")
    assert not w.is_open(utc("2026-10-25T01:15:00"))  # 02:15 CET, the second pass


@given(
    minutes=st.integers(min_value=0, max_value=60 * 24 * 21),
    start=st.integers(min_value=0, max_value=24 * 60 - 1),
    length=st.integers(min_value=1, max_value=24 * 60 - 1),
    days=st.sets(st.sampled_from(range(7)), min_size=1),
    zone=st.sampled_from(["UTC", BERLIN, "America/New_York", "Australia/Lord_Howe"]),
)
def test_next_opening_is_the_first_instant_the_window_is_open(
    minutes: int, start: int, length: int, days: set[int], zone: str
) -> None:
    names = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    end = (start + length) % (24 * 60)
    w = window(
        days=[names[d] for d in sorted(days)],
        start=f"{start // 60:02d}:{start % 60:02d}",
        end=f"{end // 60:02d}:{end % 60:02d}",
        timeZone=zone,
    )
    now = utc("2026-01-01T00:00:00") + timedelta(minutes=minutes)
    opens = w.next_opening(now)
    assert opens > now
    assert w.is_open(opens)
    assert not w.is_open(opens - timedelta(seconds=1))
    closes = w.next_closing(now)
    assert (closes is not None) == w.is_open(now)
    if closes is not None:
        assert closes > now
        assert not w.is_open(closes) or w.next_closing(closes) != closes


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"start": "03:00", "end": "03:00"}, "start and end must differ"),
        ({"start": "3:00", "end": "04:00"}, "should match"),
        ({"start": "22:00", "end": "04:00", "days": []}, "at least 1 item"),
        ({"start": "22:00", "end": "04:00", "days": ["Monday", "Monday"]}, "Duplicate value"),
        ({"start": "22:00", "end": "04:00", "timeZone": "Mars/Olympus"}, "tz database"),
        ({"start": "22:00", "end": "04:00", "timeZone": "../etc/passwd"}, "should match"),
    ],
)
def test_window_mistakes_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidPolicy, match=problem):
        parse_spec({"rollout": {"window": fields}})
