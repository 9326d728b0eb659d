"""The leader election loop (nodesysctl.election) and the candidate process
(nodesysctl.standby) against an in-memory Lease that behaves as the API server's: a
resourceVersion per write, 409 for a stale one or a second create.

The real API server, real processes and the takeover times are in tests/faults/test_failover.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from nodesysctl.election import LeaderElector, Leases
from nodesysctl.kube import KubeError
from nodesysctl.leasing import ElectionTimings, LeaseRecord
from nodesysctl.standby import (
    EXIT_LEASE_LOST,
    StandbyProbes,
    candidate_identity,
    run_as_candidate,
)

TIMINGS = ElectionTimings()  # 15 s / 10 s / 2 s


class MemoryLease:
    """One Lease object as the API server keeps it."""

    def __init__(self) -> None:
        self.namespace = "nodesysctl-system"
        self.name = "nodesysctl-operator"
        self.record: LeaseRecord | None = None
        self.version = 0
        self.unreachable = False
        self.writes: list[LeaseRecord] = []

    def _check(self) -> None:
        if self.unreachable:
            raise KubeError(0, "Unreachable", "TimeoutError: timed out")

    def read(self) -> tuple[LeaseRecord, str] | None:
        self._check()
        return None if self.record is None else (self.record, str(self.version))

    def create(self, record: LeaseRecord) -> str:
        self._check()
        if self.record is not None:
            raise KubeError(409, "AlreadyExists", "leases ... already exists")
        return self._store(record)

    def replace(self, record: LeaseRecord, resource_version: str) -> str:
        self._check()
        if resource_version != str(self.version):
            raise KubeError(409, "Conflict", "the object has been modified")
        return self._store(record)

    def _store(self, record: LeaseRecord) -> str:
        self.record, self.version = record, self.version + 1
        self.writes.append(record)
        return str(self.version)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def never_exits(code: int) -> None:
    pytest.fail(f"the process would have exited with {code}")


def elector(
    lease: Leases, identity: str, clock: FakeClock, changes: list[bool] | None = None
) -> LeaderElector:
    return LeaderElector(
        lease,
        identity,
        TIMINGS,
        clock=clock,
        # Each renewal writes a new renewTime, as the real wall clock moves on.
        wall=lambda: datetime.fromtimestamp(clock.now, UTC),
        jitter=lambda: 1.0,
        on_leading=(changes.append if changes is not None else lambda leading: None),
    )


def test_the_first_candidate_creates_the_lease_and_the_second_waits() -> None:
    lease, clock = MemoryLease(), FakeClock()
    first, second = elector(lease, "a", clock), elector(lease, "b", clock)
    assert first.attempt()
    assert lease.record is not None
    assert lease.record.holder == "a"
    assert not second.attempt()
    assert first.attempt()  # renews
    assert lease.record.holder == "a"
    assert len(lease.writes) == 2


def test_a_standby_takes_over_only_a_full_lease_duration_after_the_last_change_it_saw() -> None:
    lease, clock = MemoryLease(), FakeClock()
    leader, standby = elector(lease, "a", clock), elector(lease, "b", clock)
    assert leader.attempt()
    assert not standby.attempt()  # sees the record at 1000
    clock.now += 5
    assert leader.attempt()  # renewed at 1005: the standby's expiry restarts when it sees it
    assert not standby.attempt()
    clock.now += 14.9
    assert not standby.attempt()  # 1019.9 < 1005 + 15
    clock.now += 0.1
    assert standby.attempt()
    assert lease.record is not None
    assert (lease.record.holder, lease.record.transitions) == ("b", 1)


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    lease, clock = MemoryLease(), FakeClock()
    assert elector(lease, "old", clock).attempt()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    a.attempt(), b.attempt()
    clock.now += 15
    found = lease.read()
    assert found is not None
    # Both read the same version; the second PUT carries a stale resourceVersion.
    real_read = lease.read
    lease.read = lambda: found  # type: ignore[method-assign]
    wins = [a.attempt(), b.attempt()]
    lease.read = real_read  # type: ignore[method-assign]
    assert wins == [True, False]
    assert lease.record is not None
    assert lease.record.holder == "a"


def test_the_leader_loses_at_the_renew_deadline_counted_from_the_renewal_it_sent() -> None:
    lease, clock = MemoryLease(), FakeClock()
    changes: list[bool] = []
    leader = elector(lease, "a", clock, changes)
    stop = threading.Event()
    assert leader.acquire(stop)
    lease.unreachable = True
    ticks: list[float] = []

    def tick(timeout: float | None = None) -> bool:
        clock.now += TIMINGS.retry_period
        ticks.append(clock.now)
        return False

    stop.wait = tick  # type: ignore[method-assign]
    assert leader.keep_leading(stop) is False
    assert ticks[-1] - 1000.0 == TIMINGS.renew_deadline
    assert changes == [False, True, False]
    assert not leader.leading


def test_the_leader_stops_at_once_when_another_candidate_holds_the_lease() -> None:
    lease, clock = MemoryLease(), FakeClock()
    leader = elector(lease, "a", clock)
    assert leader.attempt()
    leader.leading = True
    lease._store(LeaseRecord("b", 15, "t", "t", 1))  # e.g. after a long pause of this process
    stop = threading.Event()
    stop.wait = lambda timeout=None: False  # type: ignore[method-assign]
    assert leader.keep_leading(stop) is False


def test_release_writes_an_empty_holder_that_the_standby_takes_at_once() -> None:
    lease, clock = MemoryLease(), FakeClock()
    changes: list[bool] = []
    leader, standby = elector(lease, "a", clock, changes), elector(lease, "b", clock)
    assert leader.acquire(threading.Event())
    assert not standby.attempt()
    leader.release()
    assert lease.record is not None
    assert (lease.record.holder, lease.record.duration_seconds) == ("", 1)
    assert changes == [False, True, False]
    assert standby.attempt()  # no waiting out the 15 s


def test_release_never_overwrites_a_lease_that_is_no_longer_ours() -> None:
    lease, clock = MemoryLease(), FakeClock()
    leader = elector(lease, "a", clock)
    assert leader.acquire(threading.Event())
    lease._store(LeaseRecord("b", 15, "t", "t", 1))
    leader.release()
    assert lease.record is not None
    assert lease.record.holder == "b"


def test_identity_is_the_pod_name_with_a_random_suffix() -> None:
    one, two = (candidate_identity({"POD_NAME": "op-7d9f"}) for _ in range(2))
    assert one.startswith("op-7d9f_")
    assert two.startswith("op-7d9f_")
    assert one != two
    assert candidate_identity({}) != ""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_standby_probes_answer_the_liveness_path_and_free_the_port() -> None:
    probes = StandbyProbes("http://127.0.0.1:0/healthz")
    port = probes.port
    assert port not in (0, 80)  # port 0 asks for any free port
    assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert _get(f"http://127.0.0.1:{port}/other")[0] == 404
    probes.close()
    # Kopf binds the same address next: it must be free at once.
    again = StandbyProbes(f"http://127.0.0.1:{port}/healthz")
    again.close()


@dataclasses.dataclass
class OperatorRun:
    """What the fake operator saw while it ran."""

    leading: bool = False
    lease_holder: str = ""


def test_candidate_runs_the_operator_only_while_leading_then_releases() -> None:
    lease = MemoryLease()
    lease._store(LeaseRecord("", 1, "t", "t", 0))  # released by a previous leader
    candidate = LeaderElector(lease, "me", TIMINGS)
    seen = OperatorRun()

    def operator(stop: threading.Event) -> int:
        seen.leading = candidate.leading
        seen.lease_holder = lease.record.holder if lease.record else ""
        return 7

    code = run_as_candidate(candidate, operator, liveness=None, exit_process=never_exits)
    assert (code, seen) == (7, OperatorRun(True, "me"))
    assert lease.record is not None
    assert lease.record.holder == ""


def test_a_leader_that_cannot_renew_exits_with_its_own_code_while_the_operator_runs() -> None:
    lease = MemoryLease()
    candidate = LeaderElector(lease, "me", ElectionTimings(3, 1.2, 0.5))
    exited: list[int] = []
    gone = threading.Event()

    def exit_process(code: int) -> None:
        exited.append(code)
        gone.set()

    def operator(stop: threading.Event) -> int:
        lease.unreachable = True
        assert gone.wait(timeout=10), "the leader kept running past its renew deadline"
        return 0

    run_as_candidate(candidate, operator, liveness=None, exit_process=exit_process)
    assert exited == [EXIT_LEASE_LOST]
    assert not candidate.leading


def test_a_standby_stopped_by_a_signal_never_runs_the_operator() -> None:
    lease = MemoryLease()
    lease._store(LeaseRecord("other", 15, "t", "t", 0))
    candidate = LeaderElector(lease, "me", TIMINGS)
    polls: list[float] = []
    real_attempt = candidate.attempt

    def attempt() -> bool:
        polls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # as the kubelet stops the pod
        return real_attempt()

    candidate.attempt = attempt  # type: ignore[method-assign]
    code = run_as_candidate(
        candidate, lambda stop: pytest.fail("ran"), liveness=None, exit_process=never_exits
    )
    assert (code, polls) == (0, [1])
