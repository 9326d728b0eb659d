"""Rendering of a policy's status: conditions and their transition times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nodesysctl.planning import PolicySummary
from nodesysctl.policy_status import (
    StatusInputs,
    build_conditions,
    condition_true,
    merge_conditions,
    same_status,
)

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
