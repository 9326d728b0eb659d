"""Rollout planning: which nodes get checked, in what order, and what the status says."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodesysctl import planning
from nodesysctl.api import parse_spec
from nodesysctl.compose import compose
from nodesysctl.planning import (
    AGENT_FORMAT,
    CheckReason,
    Conflict,
    HostDirs,
    JobFacts,
    NodeFacts,
    NodeResult,
    NodeState,
    PolicyRanges,
    conflict_notes,
    dirs_after_check,
    host_dirs,
    is_quiescent,
    job_name,
    node_spec_hash,
    plan_rollout,
    selector_query,
    spec_hash,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = "nodeport-safe"


def make_spec(**overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "ports": {"ephemeralRange": {"min": 32768, "max": 60999}},
        "rollout": {"maxConcurrent": 2, "maxFailedNodes": 2, "recheckInterval": "1h"},
    }
    raw.update(overrides)
    return parse_spec(raw)


def node(
    name: str,
    *,
    boot: str = "boot-1",
    labels: dict[str, str] | None = None,
    result: NodeResult | None = None,
) -> NodeFacts:
    return NodeFacts(name, labels or {}, boot, {POLICY: result} if result else {})


def result(
    spec: Any,
    status: NodeState = NodeState.COMPLIANT,
    *,
    boot: str = "boot-1",
    age: timedelta = timedelta(minutes=5),
    restart: bool = False,
) -> NodeResult:
    return NodeResult(status, spec_hash(spec), boot, NOW - age, "nsc-job", "msg", restart)


def job(
    node_name: str,
    spec: Any,
    *,
    finished: bool = False,
    spec_hash_: str | None = None,
) -> JobFacts:
    return JobFacts(
        name=f"job-{node_name}",
        policy=POLICY,
        node=node_name,
        spec_hash=spec_hash_ or spec_hash(spec),
        boot_id="boot-1",
        created_at=NOW,
        finished=finished,
    )


def test_new_nodes_are_checked_up_to_the_concurrency_limit() -> None:
    spec = make_spec()
    nodes = [node(f"n{i}") for i in range(5)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert [c.node for c in plan.checks] == ["n0", "n1"]
    assert {c.reason for c in plan.checks} == {CheckReason.NEW}
    assert plan.summary.pending == 5


def test_running_checks_count_against_the_limit() -> None:
    spec = make_spec()
    nodes = [node(f"n{i}") for i in range(5)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[job("n0", spec)], now=NOW)
    assert [c.node for c in plan.checks] == ["n1"]
    assert plan.summary.in_flight == 1


def test_percent_concurrency_rounds_down_but_never_below_one() -> None:
    spec = make_spec(rollout={"maxConcurrent": "10%"})
    nodes = [node(f"n{i}") for i in range(5)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert len(plan.checks) == 1


def test_compliant_node_is_left_alone_until_the_recheck_is_due() -> None:
    spec = make_spec()
    fresh = node("fresh", result=result(spec, age=timedelta(minutes=5)))
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[fresh], jobs=[], now=NOW)
    assert plan.checks == ()
    assert plan.next_due_in is not None
    assert 55 * 60 - 1 <= plan.next_due_in <= 55 * 60 + 6 * 60  # interval + up to 10% jitter
    assert plan.summary.compliant == 1

    stale = node("stale", result=result(spec, age=timedelta(hours=2)))
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[stale], jobs=[], now=NOW)
    assert [c.reason for c in plan.checks] == [CheckReason.RECHECK_DUE]


def test_reboot_and_spec_change_trigger_a_check() -> None:
    spec = make_spec()
    rebooted = node("rebooted", boot="boot-2", result=result(spec, boot="boot-1"))
    other_spec = make_spec(ports={"ephemeralRange": {"min": 40000, "max": 60999}})
    changed = node("changed", result=result(other_spec))
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[changed, rebooted], jobs=[], now=NOW)
    assert {c.node: c.reason for c in plan.checks} == {
        "changed": CheckReason.SPEC_CHANGED,
        "rebooted": CheckReason.REBOOTED,
    }
    assert {c.node: c.boot_id for c in plan.checks}["rebooted"] == "boot-2"


def test_failure_budget_halts_new_checks() -> None:
    spec = make_spec()
    failed = [node(f"bad{i}", result=result(spec, NodeState.FAILED)) for i in range(2)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=[*failed, node("new")], jobs=[], now=NOW)
    assert plan.halted
    assert plan.checks == ()
    assert plan.summary.failed == 2
    assert [w.name for w in plan.summary.worst] == ["bad0", "bad1", "new"]


def test_jobs_of_an_old_spec_or_a_vanished_node_are_stale() -> None:
    spec = make_spec()
    plan = plan_rollout(
        policy=POLICY,
        spec=spec,
        nodes=[node("n0")],
        jobs=[job("n0", spec, spec_hash_="old"), job("gone", spec)],
        now=NOW,
    )
    assert plan.stale_jobs == ("job-gone", "job-n0")
    # Changed on purpose with issue 12 (at most one agent Job per node): n0 used to get its
    # new check in the same pass; now it waits until the stale Job (deleted in the foreground,
    # so it stays in the index until its pod is gone) has left the Jobs index.
    assert plan.checks == ()
    assert plan.queued == ("n0",)
    gone = plan_rollout(policy=POLICY, spec=spec, nodes=[node("n0")], jobs=[], now=NOW)
    assert [c.node for c in gone.checks] == ["n0"]


def test_job_names_are_deterministic_and_change_per_check() -> None:
    spec = make_spec()
    first = plan_rollout(policy=POLICY, spec=spec, nodes=[node("n0")], jobs=[], now=NOW)
    again = plan_rollout(policy=POLICY, spec=spec, nodes=[node("n0")], jobs=[], now=NOW)
    assert first.checks[0].job_name == again.checks[0].job_name
    later = node("n0", result=result(spec, age=timedelta(hours=3)))
    recheck = plan_rollout(policy=POLICY, spec=spec, nodes=[later], jobs=[], now=NOW)
    assert recheck.checks[0].job_name != first.checks[0].job_name
    long_name = job_name("p" * 40, "node-" + "x" * 240, "key")
    assert len(long_name) <= 63


def test_summary_counts_states_and_keeps_at_most_ten_worst() -> None:
    spec = make_spec(rollout={"maxFailedNodes": 100})
    nodes = [node(f"d{i:02}", result=result(spec, NodeState.DRIFTED)) for i in range(15)]
    nodes.append(node("ok", result=result(spec, NodeState.REMEDIATED)))
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW)
    assert plan.summary.drifted == 15
    assert plan.summary.compliant == 1
    assert len(plan.summary.worst) == 10


def test_quiescent_only_without_running_or_planned_checks() -> None:
    spec = make_spec()
    busy = plan_rollout(policy=POLICY, spec=spec, nodes=[node("n0")], jobs=[], now=NOW)
    assert not is_quiescent(busy)
    done = plan_rollout(
        policy=POLICY, spec=spec, nodes=[node("n0", result=result(spec))], jobs=[], now=NOW
    )
    assert is_quiescent(done)


def test_conflicting_ranges_go_to_the_older_policy() -> None:
    # Changed on purpose with issue 12 ("policies compose"): a 40000-60999 policy beside a
    # 32768-60999 one used to conflict ("ephemeral ranges differ"); now the node narrows into
    # the intersection and both hold. Only ranges that cannot both hold still conflict, and
    # the older policy keeps the node (the composition rules: tests/unit/test_compose.py).
    first = make_spec()
    second = make_spec(ports={"ephemeralRange": {"min": 20000, "max": 29999}})
    compatible = make_spec(ports={"ephemeralRange": {"min": 40000, "max": 60999}})
    composition = compose(
        "n0",
        {},
        [
            PolicyRanges("young", "2026-11-02T00:00:00Z", second),
            PolicyRanges("old", "2026-11-01T00:00:00Z", first),
            PolicyRanges("twin", "2026-11-03T00:00:00Z", compatible),
        ],
    )
    conflicts = composition.conflicts
    assert [(c.winner, c.loser) for c in conflicts] == [("old", "young")]
    assert "no port in common" in conflicts[0].reason
    assert composition.target is not None
    assert composition.target.policies == ("old", "twin")


@pytest.mark.parametrize(
    ("labels", "expressions", "query"),
    [
        ({"app": "web"}, [], "app=web"),
        ({}, [{"key": "tier", "operator": "In", "values": ["b", "a"]}], "tier in (a,b)"),
        ({}, [{"key": "x", "operator": "DoesNotExist"}], "!x"),
    ],
)
def test_selector_query(
    labels: dict[str, str], expressions: list[dict[str, Any]], query: str
) -> None:
    from nodesysctl.api import LabelSelector

    selector = LabelSelector.model_validate(
        {"matchLabels": labels, "matchExpressions": expressions}
    )
    assert selector_query(selector.match_labels, selector.match_expressions) == query


def test_node_result_annotation_round_trip_and_garbage() -> None:
    spec = make_spec()
    original = result(spec, NodeState.REMEDIATED, restart=True)
    assert NodeResult.from_annotation(original.to_annotation()) == original
    assert NodeResult.from_annotation("{not json") is None
    assert NodeResult.from_annotation('{"status": "Bogus"}') is None


def test_node_facts_ignore_heartbeat_fields() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "n0", "labels": {"a": "b"}, "resourceVersion": "1"},
        "status": {"nodeInfo": {"bootID": "x"}, "conditions": [{"lastHeartbeatTime": "t1"}]},
    }
    beat = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": "2"},
        "status": {"nodeInfo": {"bootID": "x"}, "conditions": [{"lastHeartbeatTime": "t2"}]},
    }
    assert NodeFacts.from_body(body) == NodeFacts.from_body(beat)


def test_with_result_replaces_only_that_policys_result() -> None:
    spec = make_spec()
    other = result(spec, NodeState.FAILED)
    facts = NodeFacts("n0", {"a": "b"}, "boot-1", {"other": other})
    assert facts.with_result(POLICY, None) is facts
    fresh = result(spec, NodeState.REMEDIATED, age=timedelta(0))
    updated = facts.with_result(POLICY, fresh)
    assert updated.results == {"other": other, POLICY: fresh}
    assert (updated.name, updated.labels, updated.boot_id) == ("n0", {"a": "b"}, "boot-1")
    assert facts.results == {"other": other}  # facts are never changed in place


def test_conflict_notes_name_only_the_policys_own_conflicts() -> None:
    conflicts = [
        Conflict("n1", "old", POLICY, "ranges differ"),
        Conflict("n2", POLICY, "young", "ports covered"),
        Conflict("n3", "old", "young", "not ours"),
    ]
    assert conflict_notes(conflicts, POLICY) == (
        f"node n1: old takes precedence over {POLICY} (ranges differ)",
        f"node n2: {POLICY} takes precedence over young (ports covered)",
    )
    assert conflict_notes(conflicts[2:], POLICY) == ()


# --- composition, one Job per node (issue 12) -------------------------------------------------


def test_a_busy_node_waits_without_using_the_budget_and_keeps_the_rollout_busy() -> None:
    spec = make_spec()  # maxConcurrent 2
    nodes = [node(f"n{i}") for i in range(4)]
    plan = plan_rollout(policy=POLICY, spec=spec, nodes=nodes, jobs=[], now=NOW, busy={"n0"})
    assert [c.node for c in plan.checks] == ["n1", "n2"]
    assert plan.queued == ("n0",)
    assert not is_quiescent(plan)  # no restart wave while a node still waits for its check
    halted_spec = make_spec(rollout={"maxFailedNodes": 1})
    failed = node("bad", result=result(halted_spec, NodeState.FAILED))
    halted = plan_rollout(
        policy=POLICY, spec=halted_spec, nodes=[failed, *nodes], jobs=[], now=NOW, busy={"n0"}
    )
    assert (halted.checks, halted.queued) == ((), ())  # halted: nothing waits either


def test_node_hashes_decide_per_node_what_is_current() -> None:
    spec = make_spec()
    composed_hash = "c0ffee00"
    nodes = [node("alone", result=result(spec)), node("shared", result=result(spec))]
    jobs = [job("shared", spec)]  # running with the policy's own hash: stale on "shared"
    plan = plan_rollout(
        policy=POLICY, spec=spec, nodes=nodes, jobs=jobs, now=NOW,
        node_hashes={"shared": composed_hash},
    )  # fmt: skip
    assert plan.stale_jobs == ("job-shared",)
    assert plan.queued == ("shared",)  # until the stale Job is gone
    assert plan.summary.pending == 1
    assert plan.summary.compliant == 1


def policy_ranges(name: str, created: str, **spec: Any) -> PolicyRanges:
    return PolicyRanges(name, created, make_spec(**spec))


def test_the_node_spec_hash_is_the_own_one_alone_or_in_audit_else_the_compositions() -> None:
    a = policy_ranges("a", "2026-11-01T00:00:00Z")
    b = policy_ranges("b", "2026-11-02T00:00:00Z", ports={"protectedPorts": [10250]})
    audit = policy_ranges("c", "2026-11-03T00:00:00Z", remediation={"mode": "Audit"})
    alone = compose("n0", {}, [a, audit])
    assert node_spec_hash("a", a.spec, alone) == spec_hash(a.spec)
    assert node_spec_hash("c", audit.spec, alone) == spec_hash(audit.spec)
    shared = compose("n0", {}, [a, b, audit])
    assert node_spec_hash("a", a.spec, shared) not in (spec_hash(a.spec), "")
    assert node_spec_hash("a", a.spec, shared) != node_spec_hash("b", b.spec, shared)
    assert node_spec_hash("c", audit.spec, shared) == spec_hash(audit.spec)
    edited = policy_ranges("b", "2026-11-02T00:00:00Z", ports={"protectedPorts": [10256]})
    assert node_spec_hash("a", a.spec, compose("n0", {}, [a, edited])) != node_spec_hash(
        "a", a.spec, shared
    )


def test_the_spec_hash_carries_the_agent_format_so_an_upgrade_rechecks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = make_spec()
    before = spec_hash(spec)
    monkeypatch.setattr(planning, "AGENT_FORMAT", AGENT_FORMAT + 1)
    assert spec_hash(spec) != before


def test_results_record_where_files_of_ours_may_be() -> None:
    spec = make_spec()
    a = policy_ranges("a", "2026-11-01T00:00:00Z")
    target = compose("n0", {}, [a]).target
    earlier = dataclasses.replace(result(spec), sysctl_dirs=("/old.d",))
    assert dirs_after_check(earlier, target, NodeState.REMEDIATED) == ("/etc/sysctl.d",)
    assert dirs_after_check(earlier, target, NodeState.FAILED) == ("/old.d", "/etc/sysctl.d")
    assert dirs_after_check(earlier, None, NodeState.DRIFTED) == ("/old.d",)  # Audit
    quiet = compose("n0", {}, [policy_ranges("a", "x", remediation={"persist": False})]).target
    assert dirs_after_check(earlier, quiet, NodeState.COMPLIANT) == ()
    both = dataclasses.replace(earlier, sysctl_dirs=("/etc/sysctl.d", "/usr/local/lib/sysctl.d"))
    assert target is not None
    dirs = host_dirs(NodeFacts("n0", {}, "b", {"p": earlier, "q": both}), target)
    assert dirs == HostDirs("/etc/sysctl.d", True, ("/old.d", "/usr/local/lib/sysctl.d"))
    assert dirs_after_check(None, None, NodeState.DRIFTED) == ()
    assert dirs_after_check(result(spec), None, NodeState.DRIFTED) is None  # still unknown
