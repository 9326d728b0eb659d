"""Finished checks into Node results: which Jobs count, and how an agent's outcome reads."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import NodeSysctlPolicySpec, parse_spec
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, spec_hash
from nodesysctl.results import check_result, jobs_to_record, summarize_agent_result

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = "nodeport-safe"
ENFORCE_WITH_RESTARTS = parse_spec({"restart": {}})
CURRENT = spec_hash(ENFORCE_WITH_RESTARTS)


def job(node: str, name: str = "", *, age_minutes: int = 1, **fields: Any) -> JobFacts:
    facts = JobFacts(
        name or f"job-{node}",
        POLICY,
        node,
        CURRENT,
        "boot-1",
        NOW - timedelta(minutes=age_minutes),
        finished=True,
        succeeded=True,
    )
    return dataclasses.replace(facts, **fields)


def node(name: str, recorded_job: str = "") -> NodeFacts:
    results = {}
    if recorded_job:
        results[POLICY] = NodeResult(NodeState.COMPLIANT, CURRENT, "boot-1", NOW, recorded_job)
    return NodeFacts(name, {}, "boot-1", results)


def test_jobs_to_record_keeps_the_newest_finished_job_of_each_node_by_node_name() -> None:
    jobs = [
        job("n2"),
        job("n1", "old", age_minutes=5),
        job("n1", "new", age_minutes=2),
        job("n1", "running", age_minutes=0, finished=False),
    ]
    todo = jobs_to_record(POLICY, CURRENT, [node("n1"), node("n2")], jobs)
    assert [(j.node, j.name) for j in todo] == [("n1", "new"), ("n2", "job-n2")]


def test_jobs_to_record_breaks_a_creation_time_tie_by_name() -> None:
    todo = jobs_to_record(POLICY, CURRENT, [node("n1")], [job("n1", "b"), job("n1", "a")])
    assert [j.name for j in todo] == ["b"]


def test_jobs_to_record_skips_recorded_old_spec_and_unselected() -> None:
    jobs = [
        job("n1"),  # recorded already
        job("n2", spec_hash="old-spec"),  # a check of an earlier spec
        job("gone"),  # a node the policy no longer selects
    ]
    assert jobs_to_record(POLICY, CURRENT, [node("n1", "job-n1"), node("n2")], jobs) == []


def test_a_superseded_job_does_not_win_over_the_recorded_newer_one() -> None:
    jobs = [job("n1", "before", age_minutes=3), job("n1", "after", age_minutes=1)]
    assert jobs_to_record(POLICY, CURRENT, [node("n1", "after")], jobs) == []


def agent(status: str, **lists: list[str]) -> AgentResult:
    return AgentResult.model_validate(
        {"policy": POLICY, "status": status, "checkedAt": "2026-11-25T12:00:00Z", **lists}
    )


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (agent("Failed", errors=["e1", "e2"], actions=["a"]), "e1; e2"),
        (agent("Remediated", actions=["a1", "a2"], drift=["d"]), "a1; a2"),
        (agent("Drifted", drift=["d1"]), "d1"),
        (agent("Compliant", drift=["ignored"]), "no change needed"),
        (agent("Remediated"), "no change needed"),
    ],
)
def test_summarize_agent_result(result: AgentResult, line: str) -> None:
    assert summarize_agent_result(result) == line


def outcome(status: str, **lists: list[str]) -> PodOutcome:
    message = json.dumps(
        {"policy": POLICY, "status": status, "checkedAt": "2026-11-25T12:00:00Z", **lists}
    )
    return PodOutcome("job-n1", 0, message, "Completed")


def result_of(
    pod: PodOutcome | None,
    spec: NodeSysctlPolicySpec = ENFORCE_WITH_RESTARTS,
    facts: JobFacts | None = None,
) -> NodeResult:
    return check_result(facts or job("n1"), pod, spec, CURRENT, NOW)


def test_a_remediation_asks_for_restarts_when_the_policy_restarts() -> None:
    assert result_of(outcome("Remediated", actions=["set range"])) == NodeResult(
        NodeState.REMEDIATED, CURRENT, "boot-1", NOW, "job-n1", "set range", restart_pending=True
    )


@pytest.mark.parametrize(
    "spec",
    [
        parse_spec({}),  # no restart section
        parse_spec({"restart": {"mode": "Never"}}),
        parse_spec({"restart": {}, "remediation": {"mode": "Audit"}}),
    ],
)
def test_no_restart_pending_when_the_policy_does_not_restart(spec: NodeSysctlPolicySpec) -> None:
    assert result_of(outcome("Remediated", actions=["set range"]), spec).restart_pending is False


def test_other_states_never_ask_for_restarts() -> None:
    drifted = result_of(outcome("Drifted", drift=["range too wide"]))
    assert (drifted.status, drifted.message, drifted.restart_pending) == (
        NodeState.DRIFTED,
        "range too wide",
        False,
    )
    assert result_of(outcome("Compliant")).status == NodeState.COMPLIANT


@pytest.mark.parametrize(
    ("pod", "failure", "message"),
    [
        (None, "DeadlineExceeded: too long", "DeadlineExceeded: too long"),
        (None, "", "the agent reported no result"),
        (PodOutcome("job-n1", 1, "  \n", "Error"), "", "the agent reported no result"),
        (PodOutcome("job-n1", 1, "garbage{", "Error"), "", "unreadable agent result: "),
    ],
)
def test_a_check_without_a_readable_result_failed(
    pod: PodOutcome | None, failure: str, message: str
) -> None:
    failed = result_of(pod, facts=job("n1", failure_reason=failure, succeeded=False))
    assert failed.status == NodeState.FAILED
    assert failed.message.startswith(message)
    assert (failed.spec_hash, failed.boot_id, failed.job, failed.checked_at) == (
        CURRENT,
        "boot-1",
        "job-n1",
        NOW,
    )
    assert failed.restart_pending is False
