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
from nodesysctl.planning import (
    CheckOrder,
    CheckReason,
    JobFacts,
    NodeFacts,
    NodeResult,
    NodeState,
    spec_hash,
)
from nodesysctl.results import (
    FOREIGN_JOB,
    PERSIST_OVERRIDDEN,
    SOCKETS_IN_RESERVED_PORTS,
    UNTRUSTED_RESULT,
    Verdict,
    agent_notices,
    check_notices,
    check_result,
    jobs_to_record,
    judge_check,
    refused_check,
    summarize_agent_result,
    verify_existing_job,
    verify_job,
    verify_outcome,
)

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


# Since issue 12 only a remediation that wrote a sysctl asks for restarts (these tests' agent
# actions used to be a bare "set range"): see the file-only test below.
SET_RANGE = "wrote net.ipv4.ip_local_port_range = 32768 60999 (was 1024 65000)"


def test_a_remediation_asks_for_restarts_when_the_policy_restarts() -> None:
    assert result_of(outcome("Remediated", actions=[SET_RANGE])) == NodeResult(
        NodeState.REMEDIATED, CURRENT, "boot-1", NOW, "job-n1", SET_RANGE, restart_pending=True
    )


def test_a_remediation_of_the_file_alone_asks_for_no_restart() -> None:
    # Moving an earlier version's per-policy file into the node's one file (every node, once,
    # on upgrade) or rewriting it changes nothing a workload sees: no restart storm.
    moved = outcome(
        "Remediated",
        actions=[
            "created persistence file /etc/sysctl.d/zz-nodesysctl.conf",
            "removed nodesysctl file /etc/sysctl.d/zz-nodesysctl-p.conf",
        ],
    )
    assert result_of(moved).restart_pending is False


@pytest.mark.parametrize(
    "spec",
    [
        parse_spec({}),  # no restart section
        parse_spec({"restart": {"mode": "Never"}}),
        parse_spec({"restart": {}, "remediation": {"mode": "Audit"}}),
    ],
)
def test_no_restart_pending_when_the_policy_does_not_restart(spec: NodeSysctlPolicySpec) -> None:
    assert result_of(outcome("Remediated", actions=[SET_RANGE]), spec).restart_pending is False


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


# --- Verify before believing -------------------------------------------------------------------

POLICY_UID = "policy-uid"


def owned_job(node: str = "n1", **fields: Any) -> JobFacts:
    """A Job of this policy (its controller owner) for `node`, uid `uid-<name>`."""
    facts = job(node, **fields)
    return dataclasses.replace(facts, uid=f"uid-{facts.name}", owner_uid=POLICY_UID)


def own_pod(
    status: str = "Compliant", *, lists: dict[str, list[str]] | None = None, **fields: Any
) -> PodOutcome:
    """Job job-n1's own pod (controller ownerReference = the Job's uid) on n1, reporting
    `status` (with the agent's `lists`: errors, drift, actions); `fields` override."""
    own = {"pod": "job-n1-abcde", "owner_uid": "uid-job-n1", "node": "n1"}
    return dataclasses.replace(outcome(status, **(lists or {})), **{**own, **fields})


def test_a_job_the_policy_controls_is_believed() -> None:
    assert verify_job(owned_job(), POLICY_UID) == Verdict(True)


@pytest.mark.parametrize(
    "fields",
    [
        {"owner_uid": ""},  # made by hand: no controller reference to a policy
        {"owner_uid": "uid-of-a-deleted-policy-of-the-same-name"},
        {"uid": ""},  # no uid: nothing a pod could be checked against
    ],
)
def test_a_job_the_policy_does_not_control_is_foreign(fields: dict[str, Any]) -> None:
    verdict = verify_job(dataclasses.replace(owned_job(), **fields), POLICY_UID)
    assert (verdict.believed, verdict.event) == (False, FOREIGN_JOB)
    assert "Job job-n1" in verdict.reason
    assert "not owned by this NodeSysctlPolicy (uid policy-uid)" in verdict.reason


def test_an_agent_result_from_the_jobs_own_pod_on_its_node_is_believed() -> None:
    assert verify_outcome(owned_job(), own_pod(), POLICY_UID).believed


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"owner_uid": ""}, "came from pod forged, which is not owned by Job job-n1"),
        ({"owner_uid": "uid-job-other"}, "came from pod forged, which is not owned by Job job-n1"),
        ({"node": "n2"}, "came from pod forged, which ran on node n2, not n1"),
        ({"node": ""}, "came from pod forged, which ran on node (none), not n1"),
    ],
)
def test_an_agent_result_from_any_other_pod_is_untrusted(
    fields: dict[str, Any], reason: str
) -> None:
    verdict = verify_outcome(owned_job(), own_pod(pod="forged", **fields), POLICY_UID)
    assert verdict == Verdict(False, f"the agent result {reason}", UNTRUSTED_RESULT)


def test_even_the_jobs_own_pod_is_not_believed_for_a_foreign_job() -> None:
    foreign = dataclasses.replace(owned_job(), owner_uid="")
    verdict = verify_outcome(foreign, own_pod(), POLICY_UID)
    assert (verdict.believed, verdict.event) == (False, FOREIGN_JOB)


def test_judge_check_picks_the_jobs_own_pod_over_a_forged_compliant_one() -> None:
    forged = own_pod("Compliant", pod="aaa-forged", owner_uid="")
    real = own_pod("Drifted", lists={"drift": ["range too wide"]})
    judged = judge_check(
        owned_job(), [forged, real], POLICY_UID, ENFORCE_WITH_RESTARTS, CURRENT, NOW
    )
    assert (judged.result.status, judged.result.message, judged.event) == (
        NodeState.DRIFTED,
        "range too wide",
        "",
    )
    # The forged one is reported beside the believed result.
    assert [v.reason for v in judged.ignored] == [
        "the agent result came from pod aaa-forged, which is not owned by Job job-n1"
    ]


def test_judge_check_never_records_a_forged_result_alone() -> None:
    """The Job's own pod never ran (unschedulable, deadline exceeded): a forged "Compliant"
    under its name is the only outcome. Failed, naming the pod, with the Job's own reason."""
    forged = own_pod("Compliant", pod="forged", node="elsewhere")
    failed_job = owned_job(succeeded=False, failure_reason="DeadlineExceeded: too long")
    judged = judge_check(failed_job, [forged], POLICY_UID, ENFORCE_WITH_RESTARTS, CURRENT, NOW)
    assert judged.result.status == NodeState.FAILED
    assert judged.result.message == (
        "the agent result came from pod forged, which ran on node elsewhere, not n1; "
        "DeadlineExceeded: too long"
    )
    assert (judged.event, judged.ignored) == (UNTRUSTED_RESULT, ())


def test_judge_check_fails_a_foreign_job_whatever_its_pods_say() -> None:
    foreign = dataclasses.replace(owned_job(), owner_uid="")
    judged = judge_check(foreign, [own_pod()], POLICY_UID, ENFORCE_WITH_RESTARTS, CURRENT, NOW)
    assert (judged.result.status, judged.result.job, judged.event) == (
        NodeState.FAILED,
        "job-n1",
        FOREIGN_JOB,
    )
    assert "nodesysctl did not create it" in judged.result.message


def test_judge_check_prefers_the_successful_retry_and_is_otherwise_as_check_result() -> None:
    first = own_pod("Failed", pod="b-first", exit_code=1, lists={"errors": ["transient"]})
    retry = own_pod("Compliant", pod="c-retry")
    judged = judge_check(
        owned_job(), [first, retry], POLICY_UID, ENFORCE_WITH_RESTARTS, CURRENT, NOW
    )
    assert judged.result == check_result(owned_job(), retry, ENFORCE_WITH_RESTARTS, CURRENT, NOW)
    assert judged.ignored == ()
    # No outcome at all: exactly what check_result says of a Job without one.
    empty = judge_check(owned_job(), [], POLICY_UID, ENFORCE_WITH_RESTARTS, CURRENT, NOW)
    assert empty.result == check_result(owned_job(), None, ENFORCE_WITH_RESTARTS, CURRENT, NOW)


ORDER = CheckOrder("n1", CheckReason.NEW, "job-n1", "boot-1")


def test_an_existing_job_of_this_policy_for_this_node_is_ours() -> None:
    assert verify_existing_job(owned_job(), ORDER, POLICY, POLICY_UID, "jobs").believed


@pytest.mark.parametrize(
    "existing",
    [
        None,  # no agent Job at all (no policy label or node annotation)
        dataclasses.replace(owned_job(), owner_uid=""),
        dataclasses.replace(owned_job(), owner_uid="uid-of-a-deleted-policy-of-the-same-name"),
        dataclasses.replace(owned_job(), node="n2"),
        dataclasses.replace(owned_job(), policy="another-policy"),
    ],
)
def test_an_existing_job_of_anyone_else_is_foreign(existing: JobFacts | None) -> None:
    verdict = verify_existing_job(existing, ORDER, POLICY, POLICY_UID, "jobs")
    assert verdict == Verdict(
        False,
        "a Job named job-n1 that nodesysctl did not create for this node exists in jobs",
        FOREIGN_JOB,
    )


def test_a_refused_check_is_failed_for_the_current_spec_and_boot() -> None:
    verdict = verify_existing_job(None, ORDER, POLICY, POLICY_UID, "jobs")
    assert refused_check(ORDER, verdict, CURRENT, NOW) == NodeResult(
        NodeState.FAILED, CURRENT, "boot-1", NOW, "job-n1", verdict.reason
    )


# --- boot overrides and sockets in reserved ports (issue 12) ----------------------------------

OVERRIDE = {
    "file": "/etc/sysctl.d/zzz-tuning.conf",
    "key": "net.ipv4.ip_local_port_range",
    "value": "1024 65000",
}
EPHEMERAL = {
    "proto": "tcp",
    "localAddress": "10.0.0.5",
    "port": 30123,
    "state": "ESTABLISHED",
    "kind": "EphemeralUse",
    "remoteAddress": "10.96.0.1",
    "remotePort": 443,
}
SQUATTER = {"proto": "tcp6", "localAddress": "::", "port": 31000, "state": "LISTEN"}
SQUATTER_KIND = {**SQUATTER, "kind": "NodePortListener"}


def full(status: str, **fields: Any) -> AgentResult:
    return AgentResult.model_validate(
        {"policy": POLICY, "status": status, "checkedAt": "2026-11-25T12:00:00Z", **fields}
    )


def test_an_override_is_named_first_and_the_fixed_drift_not_repeated() -> None:
    drifted = full(
        "Drifted",
        mode="Enforce",
        drift=["range too wide", "/etc/sysctl.d/zzz-tuning.conf sets ... (PersistOverridden)"],
        actions=["wrote range"],
        bootOverrides=[OVERRIDE],
        bootOverrideCount=1,
    )
    assert summarize_agent_result(drifted) == (
        "PersistOverridden: at boot /etc/sysctl.d/zzz-tuning.conf sets "
        "net.ipv4.ip_local_port_range = 1024 65000 after our file, undoing the fix; wrote range"
    )
    assert [n.reason for n in agent_notices(drifted)] == [PERSIST_OVERRIDDEN]
    # Audit: the override is reported, the drift lines stay what they were.
    audit = full("Drifted", mode="Audit", drift=["range too wide"], bootOverrides=[OVERRIDE])
    assert summarize_agent_result(audit).endswith("undoing the fix; range too wide")


def test_sockets_in_reserved_ports_are_counted_and_the_first_few_named() -> None:
    compliant = full(
        "Compliant",
        conflictingSockets=[SQUATTER_KIND, EPHEMERAL, EPHEMERAL],
        conflictingSocketCount=7,
    )
    assert summarize_agent_result(compliant) == (
        "7 sockets in reserved ports: tcp6 [::]:31000 LISTEN (a NodePort-range listener), "
        "tcp 10.0.0.5:30123 ESTABLISHED to 10.96.0.1:443 (an ephemeral use), and 5 more"
    )
    assert [n.reason for n in agent_notices(compliant)] == [SOCKETS_IN_RESERVED_PORTS]
    failed = full("Failed", errors=["e1"], conflictingSockets=[EPHEMERAL], conflictingSocketCount=1)
    assert summarize_agent_result(failed).startswith("e1; 1 socket in reserved ports: tcp ")


def test_an_agent_before_the_socket_kinds_is_not_repeated() -> None:
    # It listed a protected port's own listener too (the kubelet's :10250): no notice.
    older = full("Compliant", conflictingSockets=[SQUATTER], conflictingSocketCount=1)
    assert agent_notices(older) == []
    assert summarize_agent_result(older) == "no change needed"


def pod_of(result: AgentResult) -> PodOutcome:
    return PodOutcome("job-n1", 0, result.to_json(), "Completed")


def test_drifted_by_an_override_after_a_fix_still_asks_for_restarts() -> None:
    override = {"mode": "Enforce", "bootOverrides": [OVERRIDE]}
    fixed = result_of(pod_of(full("Drifted", actions=[SET_RANGE], **override)))  # see SET_RANGE
    assert (fixed.status, fixed.restart_pending) == (NodeState.DRIFTED, True)
    assert result_of(pod_of(full("Drifted", **override))).restart_pending is False


def test_check_notices_reads_the_outcome() -> None:
    pod = pod_of(full("Compliant", conflictingSockets=[EPHEMERAL], conflictingSocketCount=1))
    assert [n.reason for n in check_notices(pod)] == [SOCKETS_IN_RESERVED_PORTS]
    assert check_notices(None) == []
    assert check_notices(PodOutcome("job-n1", 1, "garbage{", "Error")) == []
