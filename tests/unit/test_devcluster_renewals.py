"""When the simulated kubelet renews each node's Lease (pure schedule, no cluster)."""

from __future__ import annotations

import itertools

import pytest

from devcluster.kubelet.renewals import LeaseStats, RenewSchedule, percentile

PERIOD = 36.0


def drain(schedule: RenewSchedule, until: float) -> list[tuple[str, float]]:
    """Every renewal due up to ``until``, each rescheduled as a worker would right away."""
    done = []
    while (taken := schedule.pop_due(until)) is not None:
        name, due = taken
        done.append(taken)
        schedule.reschedule(name, due)
    return done


def test_the_first_renewal_comes_within_one_period_of_registration() -> None:
    schedule = RenewSchedule(PERIOD, epoch=0.0)
    for index in range(200):
        registered = 3.7 * index  # registrations during many periods
        first = schedule.add(f"n{index}", registered)
        assert registered < first <= registered + PERIOD


def test_a_burst_of_registrations_is_spread_evenly_over_the_period() -> None:
    # 1000 nodes registered within one second must not renew in a burst every period.
    schedule = RenewSchedule(PERIOD, epoch=0.0)
    due = [schedule.add(f"n{index}", 100.0 + index / 1000) for index in range(1000)]
    buckets = [0] * 10
    for at in due:
        buckets[int(at % PERIOD / PERIOD * 10)] += 1
    assert min(buckets) >= 85, buckets  # 100 each if perfectly even
    assert max(buckets) <= 115, buckets


def test_the_period_does_not_grow_with_the_number_of_nodes() -> None:
    for nodes in (10, 5000):
        schedule = RenewSchedule(PERIOD, epoch=0.0)
        for index in range(nodes):
            schedule.add(f"n{index}", 0.0)
        renewals = drain(schedule, 3 * PERIOD)
        by_node: dict[str, list[float]] = {}
        for name, due in renewals:
            by_node.setdefault(name, []).append(due)
        gaps = [b - a for times in by_node.values() for a, b in itertools.pairwise(times)]
        assert gaps
        assert max(gaps) == pytest.approx(PERIOD)
        assert min(gaps) == pytest.approx(PERIOD)


def test_a_late_renewal_is_not_followed_by_catch_ups() -> None:
    schedule = RenewSchedule(10.0, epoch=0.0)
    first = schedule.add("n", 0.0)
    assert schedule.pop_due(first + 35.0) == ("n", first)  # three periods late
    following = schedule.reschedule("n", first + 35.0)
    assert following is not None
    assert first + 35.0 < following <= first + 45.0  # back on its phase, once
    assert schedule.pop_due(first + 35.0) is None


def test_due_now_renews_at_once_then_the_node_keeps_its_phase() -> None:
    schedule = RenewSchedule(10.0, epoch=0.0)
    first = schedule.add("n", 0.0)
    schedule.due_now("n", 1.0)
    assert schedule.pop_due(1.0) == ("n", 1.0)
    assert schedule.reschedule("n", 1.0) == schedule.next_phase_point("n", 1.0)
    assert (schedule.next_phase_point("n", 1.0) - first) % 10.0 == pytest.approx(0.0)


def test_due_now_while_the_node_is_being_renewed_is_not_lost() -> None:
    schedule = RenewSchedule(10.0, epoch=0.0)
    first = schedule.add("n", 0.0)
    assert schedule.pop_due(first) == ("n", first)  # a worker renews it...
    schedule.due_now("n", first + 0.1)  # ...when the controller marks it Unknown
    assert schedule.reschedule("n", first + 0.2) == first + 0.1
    assert schedule.pop_due(first + 0.2) == ("n", first + 0.1)


def test_removed_nodes_are_never_due_and_may_come_back() -> None:
    schedule = RenewSchedule(10.0, epoch=0.0)
    schedule.add("gone", 0.0)
    schedule.add("kept", 0.0)
    schedule.remove("gone")
    schedule.due_now("gone", 0.0)  # ignored: not scheduled
    assert "gone" not in schedule
    assert len(schedule) == 1
    assert [name for name, _ in drain(schedule, 10.0)] == ["kept"]
    assert schedule.reschedule("gone", 5.0) is None
    schedule.add("gone", 20.0)
    assert "gone" in [name for name, _ in drain(schedule, 30.0)]


def test_next_due_is_the_earliest_live_entry() -> None:
    schedule = RenewSchedule(10.0, epoch=0.0)
    assert schedule.next_due() is None
    first = schedule.add("a", 0.0)
    schedule.add("b", 0.0)
    schedule.due_now("b", 20.0)  # b's old entry is stale now
    assert schedule.next_due() == min(first, 20.0)


def test_a_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RenewSchedule(0.0, epoch=0.0)


def test_percentiles_and_the_stats_record() -> None:
    assert percentile([], 0.5) == 0.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    stats = LeaseStats(
        nodes=3, period_seconds=12.0, parallelism=4, renewals=9, failures=0,
        max_gap_seconds=12.3456, oldest_lease_age_seconds=11.0, max_late_seconds=0.01,
        mean_latency_ms=3.21, p50_latency_ms=2.0, p99_latency_ms=9.99, max_latency_ms=12.0,
        never_renewed=0,
    )  # fmt: skip
    assert stats.as_dict()["max_gap_seconds"] == 12.35
    assert set(stats.as_dict()) == set(vars(stats))
