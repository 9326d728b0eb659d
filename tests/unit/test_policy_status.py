"""Rendering of a policy's status: conditions and their transition times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nodesysctl.planning import PolicySummary
from nodesysctl.policy_status import (
    JOB_REFUSED,
    StatusInputs,
    build_api_degraded_condition,
    build_conditions,
    build_invalid_conditions,
    condition_true,
    merge_conditions,
    reported_refusal,
    same_status,
    with_condition,
)
from nodesysctl.refusals import ApiRefusal

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def summary(**counts: int) -> PolicySummary:
    base = {"nodes": 3, "compliant": 3, "drifted": 0, "failed": 0, "pending": 0, "in_flight": 0}
    base.update(counts)
    return PolicySummary(worst=(), **base)


def by_type(conditions: list[dict[str, Any]]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in conditions}


def test_conditions_follow_the_rollout() -> None:
    ready = build_conditions(StatusInputs(1, "Enforce", summary(), halted=False))
    assert by_type(ready)["Ready"] == "True"
    assert by_type(ready)["Progressing"] == "False"
    running = build_conditions(
        StatusInputs(1, "Enforce", summary(compliant=1, pending=2, in_flight=2), halted=False)
    )
    assert by_type(running)["Ready"] == "False"
    assert by_type(running)["Progressing"] == "True"
    halted = build_conditions(StatusInputs(1, "Enforce", summary(failed=2), halted=True))
    assert by_type(halted)["Degraded"] == "True"
    assert "halted" in next(c for c in halted if c["type"] == "Degraded")["message"]


def test_transition_time_kept_while_status_unchanged() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "True"}], NOW)
    later = datetime(2026, 11, 26, tzinfo=UTC)
    same = merge_conditions(first, [{"type": "Ready", "status": "True"}], later)
    flipped = merge_conditions(first, [{"type": "Ready", "status": "False"}], later)
    assert same[0]["lastTransitionTime"] == "2026-11-25T12:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2026-11-26T00:00:00Z"


def test_condition_true() -> None:
    status = {
        "conditions": [
            {"type": "Degraded", "status": "True"},
            {"type": "Conflict", "status": "False"},
        ]
    }
    assert condition_true(status, "Degraded")
    assert not condition_true(status, "Conflict")
    assert not condition_true(status, "Ready")
    assert not condition_true({}, "Degraded")


def test_same_status_ignores_transition_times_and_unwritten_keys() -> None:
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T12:00:00Z"}
    current = {"nodes": 3, "kopf": {"x": 1}, "conditions": [ready]}
    later = {**ready, "lastTransitionTime": "2026-11-25T13:00:00Z"}
    assert same_status(current, {"nodes": 3, "conditions": [later]})
    assert not same_status(current, {"nodes": 4})
    assert not same_status(current, {"conditions": [{**ready, "status": "False"}]})
    assert not same_status(current, {"conditions": [{**ready, "type": "Degraded"}]})
    assert not same_status({}, {"nodes": 3})


def test_a_refused_job_is_remembered_for_its_generation_only() -> None:
    conditions = merge_conditions([], build_invalid_conditions("refused: x", 3, JOB_REFUSED), NOW)
    status = {"observedGeneration": 3, "conditions": conditions}
    assert by_type(conditions) == {"Invalid": "True", "Ready": "False", "Progressing": "False"}
    assert {c["reason"] for c in conditions} == {JOB_REFUSED}
    assert reported_refusal(status, 3) == "refused: x"
    assert reported_refusal(status, 4) is None  # edited since: the new spec is tried
    spec_invalid = merge_conditions([], build_invalid_conditions("bad range", 3), NOW)
    assert reported_refusal({"conditions": spec_invalid}, 3) is None


def test_degraded_replaces_only_its_own_condition() -> None:
    before = merge_conditions(
        [], build_conditions(StatusInputs(2, "Enforce", summary(), halted=False)), NOW
    )
    refusal = ApiRefusal(503, "ServiceUnavailable", "etcdserver: request timed out")
    later = NOW + timedelta(minutes=1)
    after = with_condition(before, build_api_degraded_condition(refusal, 2), later)
    assert [c["type"] for c in after] == [c["type"] for c in before]
    degraded = next(c for c in after if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "APIRefused"
    assert degraded["message"] == (
        "503 ServiceUnavailable: etcdserver: request timed out; retrying with backoff"
    )
    assert degraded["lastTransitionTime"] == "2026-11-25T12:01:00Z"
    assert [c for c in after if c["type"] != "Degraded"] == [
        c for c in before if c["type"] != "Degraded"
    ]
    assert with_condition([], degraded, later) == [degraded]
