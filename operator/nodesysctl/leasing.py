"""Leader election decisions on a `coordination.k8s.io/v1` Lease: pure, on an injected clock.

client-go's semantics (`tools/leaderelection/leaderelection.go`), not its code:

* a candidate never trusts another process's clock: a Lease held by someone else expires
  `leaseDurationSeconds` after *this* candidate last saw its record change, on its own
  monotonic clock (the `renewTime` written into the record is for people, never compared);
* the leader renews every retry period; it stops being the leader once `renew_deadline` has
  passed since the last renewal it *sent* (timed from before the request, so a slow answer
  never extends it);
* releasing writes an empty holder and a one-second duration (client-go's ReleaseOnCancel):
  a candidate takes a Lease with no holder at once.

Safety needs the old leader to stop before any candidate may take over:
`renew_deadline + retry_period + 2 * request_timeout < lease_duration` (after the last
renewal sent, at most one wait and one attempt, a GET and a PUT, before the deadline is
checked), which `ElectionTimings` refuses to break. At client-go's defaults (15 s, 10 s, 2 s,
and a 1 s request timeout) that is 14 s < 15 s.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

# client-go's defaults (kube-controller-manager's --leader-elect-* flags).
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
DEFAULT_LEASE_NAME = "nodesysctl-operator"
# Each request (answered or given up) takes at most half a retry period, so that an attempt,
# a GET and a PUT, ends before the next one is due.
REQUEST_TIMEOUT_SHARE = 0.5
RELEASED_DURATION_SECONDS = 1  # what client-go writes on release


class InvalidTimingsError(ValueError):
    """Lease timings that would let two leaders act at once (or never renew)."""


@dataclasses.dataclass(frozen=True)
class ElectionTimings:
    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise InvalidTimingsError("lease duration, renew deadline and retry period must be > 0")
        if self.lease_duration != int(self.lease_duration):
            raise InvalidTimingsError("the lease duration must be whole seconds (an integer field)")
        if self.renew_deadline <= self.retry_period:
            raise InvalidTimingsError("the renew deadline must be longer than the retry period")
        latest_stop = self.renew_deadline + self.retry_period + 2 * self.request_timeout
        if latest_stop >= self.lease_duration:
            raise InvalidTimingsError(
                f"renew deadline + 2 retry periods ({latest_stop:g}s) must be "
                f"shorter than the lease duration ({self.lease_duration:g}s): a leader that "
                "cannot renew must have stopped before a standby may take over"
            )

    @property
    def request_timeout(self) -> float:
        """The total time one Lease request may take (connect, send, answer)."""
        return self.retry_period * REQUEST_TIMEOUT_SHARE

    @property
    def takeover_bound(self) -> float:
        """The longest a standby waits after the leader vanished without releasing, start-up
        of the operator not included: the lease duration from the last renewal it saw, which
        it saw at most one poll late, and one more poll to notice the expiry."""
        return self.lease_duration + 2 * self.retry_period


@dataclasses.dataclass(frozen=True)
class ElectionConfig:
    """`nodesysctl run --leader-elect ...`: off by default, for a single local process (the
    dev cluster, `make demo`, the e2e tests); the shipped Deployment turns it on."""

    enabled: bool = False
    lease_name: str = DEFAULT_LEASE_NAME
    namespace: str = ""  # empty: the operator's namespace
    timings: ElectionTimings = ElectionTimings()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ElectionConfig:
        """The defaults of the flags: NODESYSCTL_LEADER_ELECT=true, NODESYSCTL_LEASE_*."""
        return cls(
            enabled=env.get("NODESYSCTL_LEADER_ELECT", "").lower() in ("1", "true", "yes"),
            lease_name=env.get("NODESYSCTL_LEASE_NAME", DEFAULT_LEASE_NAME),
            namespace=env.get("NODESYSCTL_LEASE_NAMESPACE", ""),
            timings=ElectionTimings(
                lease_duration=float(env.get("NODESYSCTL_LEASE_DURATION", DEFAULT_LEASE_DURATION)),
                renew_deadline=float(
                    env.get("NODESYSCTL_LEASE_RENEW_DEADLINE", DEFAULT_RENEW_DEADLINE)
                ),
                retry_period=float(env.get("NODESYSCTL_LEASE_RETRY_PERIOD", DEFAULT_RETRY_PERIOD)),
            ),
        )


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec, the part leader election reads and writes."""

    holder: str = ""
    duration_seconds: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0


def record_from_spec(spec: Mapping[str, Any] | None) -> LeaseRecord:
    spec = spec or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def spec_from_record(record: LeaseRecord) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
        "acquireTime": record.acquire_time,
        "renewTime": record.renew_time,
    }
    if record.holder:
        spec["holderIdentity"] = record.holder
    return {key: value for key, value in spec.items() if value is not None}


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime as the API server writes it (RFC 3339, microseconds, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class Observation:
    """The record this candidate last saw and when (its monotonic clock) it last changed."""

    record: LeaseRecord
    changed_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """Only a changed record restarts the expiry: an unchanged one is a holder that stopped."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE = "take"  # free, expired or released: write ourselves in
    RENEW = "renew"  # ours: write a new renewTime
    WAIT = "wait"  # someone else holds it and it has not expired


def decide(observation: Observation | None, identity: str, now: float) -> Step:
    """What to do with the Lease as last observed (None: it does not exist)."""
    if observation is None:
        return Step.CREATE
    record = observation.record
    if record.holder == identity:
        return Step.RENEW
    if record.holder and now < observation.changed_at + record.duration_seconds:
        return Step.WAIT
    return Step.TAKE


def next_record(
    current: LeaseRecord | None,
    identity: str,
    timings: ElectionTimings,
    wall_now: datetime,
) -> LeaseRecord:
    """The record to write for CREATE, TAKE or RENEW: taking counts a transition and sets
    acquireTime (as client-go, also after a release); a renewal keeps both."""
    stamp = micro_time(wall_now)
    duration = int(timings.lease_duration)
    if current is not None and current.holder == identity:
        return dataclasses.replace(current, duration_seconds=duration, renew_time=stamp)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(identity, duration, stamp, stamp, transitions)


def released_record(current: LeaseRecord, wall_now: datetime) -> LeaseRecord:
    stamp = micro_time(wall_now)
    return LeaseRecord("", RELEASED_DURATION_SECONDS, stamp, stamp, current.transitions)


def renewal_overdue(last_renewal_sent: float, now: float, timings: ElectionTimings) -> bool:
    """The leader must stop: no renewal it sent in the last `renew_deadline` succeeded."""
    return now - last_renewal_sent >= timings.renew_deadline


def standby_poll_delay(timings: ElectionTimings, jitter: float) -> float:
    """A candidate polls a held Lease every 0.8 to 1 retry periods (`jitter` in [0, 1]):
    spread out, yet never slower than the retry period `takeover_bound` assumes."""
    return timings.retry_period * (0.8 + 0.2 * min(max(jitter, 0.0), 1.0))
