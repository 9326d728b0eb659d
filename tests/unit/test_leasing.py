"""Leader election decisions (nodesysctl.leasing): client-go's semantics on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodesysctl.leasing import (
    ElectionConfig,
    ElectionTimings,
    InvalidTimingsError,
    LeaseRecord,
    Observation,
    Step,
    decide,
    micro_time,
    next_record,
    observe,
    record_from_spec,
    released_record,
    renewal_overdue,
    spec_from_record,
    standby_poll_delay,
)

TIMINGS = ElectionTimings()  # 15 s / 10 s / 2 s
WALL = datetime(2026, 12, 1, 20, 0, 0, 123456, tzinfo=UTC)
OTHER = LeaseRecord("other_1", 15, "t0", "t0", 4)


def test_client_go_defaults_and_the_derived_figures() -> None:
    assert (TIMINGS.lease_duration, TIMINGS.renew_deadline, TIMINGS.retry_period) == (15, 10, 2)
    assert TIMINGS.request_timeout == 1.0
    assert TIMINGS.takeover_bound == 19.0


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "words"),
    [
        (15, 10, 0, "> 0"),
        (15.5, 10, 2, "whole seconds"),
        (15, 2, 2, "longer than the retry period"),
        # 10 + 4 + 2 * 2 = 18 >= 15: the old leader could still act after a takeover.
        (15, 10, 4, "shorter than the lease duration"),
        (14, 10, 2, "shorter than the lease duration"),
    ],
)
def test_timings_that_allow_two_leaders_are_refused(
    lease: float, renew: float, retry: float, words: str
) -> None:
    with pytest.raises(InvalidTimingsError, match=words):
        ElectionTimings(lease, renew, retry)


def test_short_test_timings_are_valid() -> None:
    assert ElectionTimings(6, 3.5, 1).takeover_bound == 8


def test_no_lease_is_created() -> None:
    assert decide(None, "me", now=0) is Step.CREATE


def test_our_own_lease_is_renewed() -> None:
    mine = Observation(LeaseRecord("me", 15, "t", "t", 0), changed_at=0)
    assert decide(mine, "me", now=1000) is Step.RENEW


def test_a_held_lease_expires_on_our_clock_from_when_we_saw_it_change() -> None:
    seen = Observation(OTHER, changed_at=100.0)
    assert decide(seen, "me", now=114.9) is Step.WAIT
    assert decide(seen, "me", now=115.0) is Step.TAKE


def test_an_unchanged_record_keeps_its_first_sighting_and_a_renewal_restarts_it() -> None:
    first = observe(None, OTHER, now=100.0)
    assert observe(first, OTHER, now=110.0) is first  # the holder stopped renewing
    renewed = LeaseRecord("other_1", 15, "t0", "t1", 4)
    assert observe(first, renewed, now=110.0) == Observation(renewed, 110.0)
    assert decide(observe(first, renewed, now=110.0), "me", now=120.0) is Step.WAIT


def test_the_record_s_wall_clock_times_are_never_compared() -> None:
    stale_looking = LeaseRecord("other_1", 15, "1970-01-01T00:00:00.000000Z",
                                "1970-01-01T00:00:00.000000Z", 0)  # fmt: skip
    assert decide(observe(None, stale_looking, now=5.0), "me", now=6.0) is Step.WAIT


def test_a_released_lease_is_taken_at_once() -> None:
    released = released_record(OTHER, WALL)
    assert released == LeaseRecord("", 1, micro_time(WALL), micro_time(WALL), 4)
    assert decide(Observation(released, changed_at=100.0), "me", now=100.0) is Step.TAKE


def test_taking_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    taken = next_record(OTHER, "me", TIMINGS, WALL)
    assert taken == LeaseRecord("me", 15, micro_time(WALL), micro_time(WALL), 5)
    later = datetime(2026, 12, 1, 20, 0, 2, tzinfo=UTC)
    renewed = next_record(taken, "me", TIMINGS, later)
    assert renewed.acquire_time == micro_time(WALL)
    assert renewed.renew_time == micro_time(later)
    assert renewed.transitions == 5
    assert next_record(None, "me", TIMINGS, WALL).transitions == 0


def test_renewal_is_overdue_at_the_renew_deadline_from_the_last_renewal_sent() -> None:
    assert not renewal_overdue(last_renewal_sent=50.0, now=59.9, timings=TIMINGS)
    assert renewal_overdue(last_renewal_sent=50.0, now=60.0, timings=TIMINGS)


def test_standby_polls_never_slower_than_the_retry_period() -> None:
    delays = [standby_poll_delay(TIMINGS, jitter) for jitter in (-1.0, 0.0, 0.5, 1.0, 7.0)]
    assert delays == [1.6, 1.6, 1.8, 2.0, 2.0]


def test_lease_spec_round_trip_as_the_api_server_writes_it() -> None:
    spec = {
        "holderIdentity": "op-7d9f_1a2b3c4d",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-01T20:00:00.123456Z",
        "renewTime": "2026-12-01T20:00:02.000001Z",
        "leaseTransitions": 3,
    }
    assert spec_from_record(record_from_spec(spec)) == spec
    assert record_from_spec(None) == LeaseRecord()
    # A released record has no holder field at all, as client-go writes it.
    assert "holderIdentity" not in spec_from_record(released_record(OTHER, WALL))
    assert micro_time(WALL) == "2026-12-01T20:00:00.123456Z"


def test_election_is_off_unless_asked_and_reads_its_environment() -> None:
    assert ElectionConfig.from_env({}) == ElectionConfig()
    assert not ElectionConfig().enabled
    config = ElectionConfig.from_env(
        {
            "NODESYSCTL_LEADER_ELECT": "true",
            "NODESYSCTL_LEASE_NAME": "x",
            "NODESYSCTL_LEASE_NAMESPACE": "ns",
            "NODESYSCTL_LEASE_DURATION": "6",
            "NODESYSCTL_LEASE_RENEW_DEADLINE": "3.5",
            "NODESYSCTL_LEASE_RETRY_PERIOD": "1",
        }
    )
    assert config == ElectionConfig(True, "x", "ns", ElectionTimings(6, 3.5, 1))
