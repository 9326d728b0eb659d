"""Pure builders of a policy's status: the counts, the worst nodes and the conditions.

The reconciler writes what `build_status` returns (plus conditions merged by `merge_conditions`,
which keeps each condition's lastTransitionTime while its status holds, as metav1 does), and
only when `same_status` says the write would change something. Plain dicts, so the status a
user reads in `kubectl get -o yaml` is unit-tested without a cluster.

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from nodesysctl.planning import PolicySummary, format_time
from nodesysctl.refusals import ApiRefusal

INVALID_SPEC = "InvalidSpec"  # the operator's models refuse the spec (`parse_spec`)
JOB_REFUSED = "JobRefused"  # the API server refuses the agent Job the spec makes


def condition(
    kind: str, status: bool, reason: str, message: str, generation: int
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:1000],
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], wanted: Sequence[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime when a condition's status did not change (as metav1 does)."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in wanted:
        old = before.get(cond["type"])
        if old is not None and old.get("status") == cond["status"]:
            stamp = old.get("lastTransitionTime") or format_time(now)
        else:
            stamp = format_time(now)
        merged.append({**cond, "lastTransitionTime": stamp})
    return merged


@dataclasses.dataclass(frozen=True)
class StatusInputs:
    generation: int
    mode: str
    summary: PolicySummary
    halted: bool
    conflicts: tuple[str, ...] = ()  # human sentences, at most a few
    last_restart: Mapping[str, Any] | None = None
    restart_wave: Mapping[str, Any] | None = None  # the wave in progress (None: none)
    restart_budget: Mapping[str, Any] | None = None
    # Conditions of other modules' making (`maintenance`'s Deferred), after ours.
    more_conditions: tuple[dict[str, Any], ...] = ()


def build_conditions(inputs: StatusInputs) -> list[dict[str, Any]]:
    s = inputs.summary
    gen = inputs.generation
    settled = s.pending == 0 and s.in_flight == 0
    healthy = settled and s.failed == 0 and s.drifted == 0 and s.waiting == 0
    if healthy:
        ready = condition(
            "Ready", True, "AllCompliant", f"{s.compliant}/{s.nodes} nodes compliant", gen
        )
    elif s.failed or s.drifted:
        ready = condition(
            "Ready",
            False,
            "NodesNotCompliant",
            f"{s.drifted} drifted, {s.failed} failed of {s.nodes} nodes",
            gen,
        )
    elif not settled:
        ready = condition("Ready", False, "RolloutInProgress", f"{s.pending} nodes pending", gen)
    else:
        ready = condition(
            "Ready",
            False,
            "NodesWaiting",
            f"{s.waiting} nodes cannot run a check now (not Ready, cordoned or tainted; see "
            "worstNodes); they are checked once available",
            gen,
        )
    waiting = f", {s.waiting} nodes waiting" if s.waiting else ""
    progressing = condition(
        "Progressing",
        not settled and not inputs.halted,
        "Checking" if not settled and not inputs.halted else "Idle",
        f"{s.in_flight} checks running, {s.pending} nodes pending{waiting}",
        gen,
    )
    degraded = condition(
        "Degraded",
        inputs.halted,
        "FailureBudgetExhausted" if inputs.halted else "WithinBudget",
        (
            f"rollout halted: {s.failed} nodes failed; fix them, then edit the policy to retry"
            if inputs.halted
            else f"{s.failed} nodes failed"
        ),
        gen,
    )
    invalid = condition("Invalid", False, "Valid", "spec accepted", gen)
    conflict = condition(
        "Conflict",
        bool(inputs.conflicts),
        "PolicyConflict" if inputs.conflicts else "NoConflict",
        "; ".join(inputs.conflicts[:3]) or "no other policy contests these nodes",
        gen,
    )
    return [ready, progressing, degraded, invalid, conflict, *inputs.more_conditions]


def build_status(inputs: StatusInputs) -> dict[str, Any]:
    """The policy status without conditions' transition times (see `merge_conditions`)."""
    s = inputs.summary
    status: dict[str, Any] = {
        "observedGeneration": inputs.generation,
        "nodes": s.nodes,
        "compliant": s.compliant,
        "drifted": s.drifted,
        "failed": s.failed,
        "pending": s.pending,
        "waiting": s.waiting,
        "worstNodes": [
            {"name": w.name, "state": w.state.value, "message": w.message[:200]} for w in s.worst
        ],
    }
    if inputs.last_restart is not None:
        status["lastRestart"] = dict(inputs.last_restart)
    # Written as null when there is none: the merge patch removes a finished wave's.
    status["restartWave"] = dict(inputs.restart_wave) if inputs.restart_wave else None
    if inputs.restart_budget is not None:
        status["restartBudget"] = dict(inputs.restart_budget)
    return status


def build_invalid_conditions(
    message: str, generation: int, reason: str = INVALID_SPEC
) -> list[dict[str, Any]]:
    ready = {
        INVALID_SPEC: "the spec is invalid; nothing is applied",
        JOB_REFUSED: "the API server refuses the agent Job; nothing is applied",
    }.get(reason, "nothing is applied")
    return [
        condition("Invalid", True, reason, message, generation),
        condition("Ready", False, reason, ready, generation),
        condition("Progressing", False, reason, "nothing is applied", generation),
    ]


def reported_refusal(status: Mapping[str, Any], generation: int) -> str | None:
    """The message of a `JobRefused` Invalid condition the status holds for this generation:
    the API server refused this spec's agent Job already, and will refuse it again."""
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "Invalid"
            and cond.get("status") == "True"
            and cond.get("reason") == JOB_REFUSED
            and cond.get("observedGeneration") == generation
        ):
            return str(cond.get("message") or "")
    return None


def build_api_degraded_condition(refusal: ApiRefusal, generation: int) -> dict[str, Any]:
    """Degraded while passes fail on the API server's side (RBAC, throttling, 5xx, no answer):
    the next successful pass writes the usual Degraded condition over it."""
    return condition(
        "Degraded",
        True,
        refusal.condition_reason,
        f"{refusal.describe()}; retrying with backoff",
        generation,
    )


def with_condition(
    previous: Sequence[Mapping[str, Any]], wanted: dict[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """The conditions with `wanted` in place of the one of its type, the others as they are."""
    [merged] = merge_conditions(previous, [wanted], now)
    conditions = [merged if c.get("type") == wanted["type"] else dict(c) for c in previous]
    return conditions if merged in conditions else [*conditions, merged]


def condition_true(status: Mapping[str, Any], kind: str) -> bool:
    """Whether the policy status has condition `kind` with status "True"."""
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or []
    )


def same_status(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether writing `wanted` would change anything (transition times aside)."""
    for key, value in wanted.items():
        if key == "conditions":
            have = {
                c.get("type"): {**c, "lastTransitionTime": None} for c in current.get(key) or []
            }
            for cond in value:
                if have.get(cond["type"]) != {**cond, "lastTransitionTime": None}:
                    return False
        elif current.get(key) != value:
            return False
    return True
