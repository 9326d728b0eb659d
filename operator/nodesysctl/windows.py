"""Maintenance windows as arithmetic on instants: is a window open at `t`, when does it open
next, when does it close (`spec.rollout.window`, `spec.restart.window`).

A window is a set of weekdays, a start and an end wall time and an IANA time zone. It opens on
each listed day at `start` and closes at the next `end`: on the same day when `end` is later,
on the next day when it is earlier (a window crossing midnight belongs to the day it opens,
as kured's and system-upgrade-controller's do).

Wall times are read the way a person reading the local clock would, with one rule for the two
DST cases (docs/operations.md, "Maintenance windows"):
- a wall time that occurs twice (the fall-back hour) means its first occurrence;
- a wall time that does not occur (the spring-forward gap) means the instant the clock jumps
  over it. A window lying wholly inside the gap has no length that day and does not open; one
  that straddles the gap is shorter by the jump.
So a window is never longer than its wall-clock span except across a fall-back (02:00-03:00
in Europe/Berlin on the last Sunday of October lasts two hours: the clock shows 02:xx twice).

Pure core: the clock is the caller's (`now`), and only the standard library is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from nodesysctl.api import MaintenanceWindow

# A window lasts less than a day of wall time; looking one day back finds the occurrence a
# window crossing midnight is in, and eight ahead the next one of a window open once a week.
_DAYS_BACK = 1
_DAYS_AHEAD = 8


@dataclasses.dataclass(frozen=True)
class Opening:
    """One occurrence of a window: open from `opens` (included) to `closes` (excluded)."""

    opens: datetime
    closes: datetime

    def contains(self, moment: datetime) -> bool:
        return self.opens <= moment < self.closes


@dataclasses.dataclass(frozen=True)
class Window:
    """A window ready for arithmetic: ISO weekdays (Monday = 1), wall times and the zone."""

    days: frozenset[int]
    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def from_spec(cls, spec: MaintenanceWindow) -> Window:
        return cls(
            days=frozenset(day.iso_number for day in spec.days),
            start=spec.start_time(),
            end=spec.end_time(),
            zone=ZoneInfo(spec.time_zone),
        )

    def openings(self, around: datetime) -> Iterator[Opening]:
        """The occurrences opening from the day before `around` (local) on, in order; those
        of no length (inside a spring-forward gap) left out."""
        today = around.astimezone(self.zone).date()
        for offset in range(-_DAYS_BACK, _DAYS_AHEAD + 1):
            day = today + timedelta(days=offset)
            if day.isoweekday() not in self.days:
                continue
            end_day = day if self.end > self.start else day + timedelta(days=1)
            opening = Opening(
                local_instant(day, self.start, self.zone),
                local_instant(end_day, self.end, self.zone),
            )
            if opening.opens < opening.closes:
                yield opening

    def current(self, now: datetime) -> Opening | None:
        """The occurrence open at `now`, if any."""
        return next((o for o in self.openings(now) if o.contains(now)), None)

    def is_open(self, now: datetime) -> bool:
        return self.current(now) is not None

    def next_opening(self, now: datetime) -> datetime:
        """The next instant after `now` at which the window opens (while it is open: the
        opening after the current one)."""
        for opening in self.openings(now):
            if opening.opens > now:
                return opening.opens
        raise AssertionError("a window with a day listed opens within eight days")

    def next_closing(self, now: datetime) -> datetime | None:
        """When the occurrence open at `now` closes (None while closed)."""
        current = self.current(now)
        return current.closes if current is not None else None


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The instant (UTC) at which the clock in `zone` first reads `at` on `day`: the first
    occurrence of a repeated wall time, the jump over a skipped one."""
    first = datetime.combine(day, at, tzinfo=zone)  # fold=0: the first occurrence
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == first.replace(tzinfo=None):
        return instant
    # In a gap, fold=0 reads the wall time with the offset before the jump (an instant after
    # it) and fold=1 with the offset after (an instant before it): the jump lies between.
    low = int(first.replace(fold=1).astimezone(UTC).timestamp())  # the clock reads less
    high = math.ceil(instant.timestamp())  # the clock reads `at` or later
    wall = first.replace(tzinfo=None)
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)
