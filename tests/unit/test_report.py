"""`nodesysctl status` rendering."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import parse_spec
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, spec_hash
from nodesysctl.report import build_rows, render, render_restarts
from nodesysctl.results import check_result

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WORKERS = {"spec": {"nodeSelector": {"matchLabels": {"role": "worker"}}}}


def policy(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, **spec}


def test_rows_show_state_age_and_detail_for_selected_nodes_only() -> None:
    spec = parse_spec(WORKERS["spec"])
    fixed = NodeResult(
        NodeState.REMEDIATED,
        spec_hash(spec),
        "b",
        NOW - timedelta(minutes=3),
        "job",
        "set net.ipv4.ip_local_port_range to 32768 60999",
    )
    nodes = [
        NodeFacts("w1", {"role": "worker"}, "b", {"safe": fixed}),
        NodeFacts("w2", {"role": "worker"}, "b", {}),
        NodeFacts("cp", {"role": "control-plane"}, "b", {}),
    ]
    rows = build_rows([policy("safe", WORKERS)], nodes, NOW)
    assert [(r.node, r.state, r.checked) for r in rows] == [
        ("w1", "Remediated", "3m ago"),
        ("w2", "Pending", "never"),
    ]
    text = render(rows, width=80)
    assert text.splitlines()[0].split() == ["NODE", "POLICY", "STATE", "CHECKED", "DETAIL"]
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" in text  # the long detail was cut to fit


def test_invalid_policy_and_empty_cluster_are_explained() -> None:
    bad = policy("bad", {"spec": {"ports": {"ephemeralRange": {"min": 5, "max": 1}}}})
    rows = build_rows([bad], [NodeFacts("n", {}, "b", {})], NOW)
    assert rows[0].state == "Invalid"
    assert render([]) == "no node is selected by any NodeSysctlPolicy"


def test_the_detail_leads_with_sockets_in_reserved_ports_and_boot_overrides() -> None:
    # As a check's result reads back (nodesysctl.results), for a compliant node.
    spec = parse_spec(WORKERS["spec"])
    agent = AgentResult.model_validate(
        {
            "policy": "safe",
            "status": "Compliant",
            "checkedAt": "2026-11-25T12:00:00Z",
            "conflictingSockets": [
                {
                    "proto": "tcp",
                    "localAddress": "10.0.0.5",
                    "port": 30123,
                    "state": "ESTABLISHED",
                    "kind": "EphemeralUse",
                    "remoteAddress": "10.96.0.1",
                    "remotePort": 443,
                }
            ],
            "conflictingSocketCount": 4,
        }
    )
    job = JobFacts("job", "safe", "w1", spec_hash(spec), "b", NOW, finished=True, succeeded=True)
    outcome = PodOutcome("job", 0, agent.to_json(), "Completed")
    result = check_result(job, outcome, spec, spec_hash(spec), NOW)
    rows = build_rows(
        [policy("safe", WORKERS)], [NodeFacts("w1", {"role": "worker"}, "b", {"safe": result})], NOW
    )
    assert rows[0].state == "Compliant"
    assert rows[0].detail.startswith(
        "4 sockets in reserved ports: tcp 10.0.0.5:30123 ESTABLISHED to 10.96.0.1:443"
    )


def test_restarts_show_the_wave_to_come_and_the_last_one_with_reasons() -> None:
    policy = {
        "metadata": {"name": "p"},
        "status": {
            "restartWave": {
                "wave": "w2",
                "mode": "Report",
                "nodes": 1,
                "remaining": 1,
                "counts": {"Restart": 1},
                "steps": [{"workload": "Deployment/a/web", "action": "Restart", "reason": "why"}],
            },
            "lastRestart": {
                "wave": "w1",
                "at": "2026-11-25T12:00:00Z",
                "nodes": 2,
                "count": 1,
                "evicted": 1,
                "workloads": ["DaemonSet/a/agent"],
                "notRestarted": [
                    {"workload": "Pod/a/bare", "action": "NotRestartable", "reason": "bare"}
                ],
            },
            "restartBudget": {"perHour": 60, "remaining": 59, "fullAt": "2026-11-25T12:01:00Z"},
        },
    }
    text = render_restarts([policy, {"metadata": {"name": "q"}}])
    assert text.splitlines() == [
        "p: wave w2 (Report) over 1 nodes, 1 to do: 1 Restart",
        "  Restart          Deployment/a/web  why",
        "p: last wave w1 at 2026-11-25T12:00:00Z: restarted 1 workloads (1 DaemonSet pods "
        "evicted) over 2 nodes: DaemonSet/a/agent",
        "  NotRestartable   Pod/a/bare  bare",
        "p: budget 59/60 an hour left (full at 2026-11-25T12:01:00Z)",
        "q: no restart wave yet",
    ]
