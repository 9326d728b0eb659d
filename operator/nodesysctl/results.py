"""From finished checks to Node results: which finished Jobs count, and what their agent said.

The reconcile pass fetches a missing pod outcome, writes each result onto its Node and announces
it; every decision before those writes is made here, on plain facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import NodeSysctlPolicySpec
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, wants_restart


def jobs_to_record(
    policy: str, current_spec_hash: str, nodes: Sequence[NodeFacts], jobs: Iterable[JobFacts]
) -> list[JobFacts]:
    """The finished Jobs of the current spec whose results `nodes` do not hold yet, by node name.

    Only the newest finished Job of a node counts. An older one (a check before a reboot, or
    before a recheck, still within ttlSecondsAfterFinished) was superseded: recording it again
    would overwrite the newer result with a stale boot ID, which asks for yet another check,
    whose Job is again newer... a loop until the TTL removes the old Jobs.
    """
    by_name = {node.name: node for node in nodes}
    newest: dict[str, JobFacts] = {}
    for job in jobs:
        if not job.finished or job.node not in by_name or job.spec_hash != current_spec_hash:
            continue
        seen = newest.get(job.node)
        if seen is None or (job.created_at, job.name) > (seen.created_at, seen.name):
            newest[job.node] = job
    todo = []
    for node_name, job in sorted(newest.items()):
        previous = by_name[node_name].results.get(policy)
        if previous is None or previous.job != job.name:
            todo.append(job)
    return todo


def summarize_agent_result(result: AgentResult) -> str:
    """One line for the Node annotation, Events and `nodesysctl status`: what matters most
    for each outcome (the errors, the drift left, the fixes made)."""
    status = str(result.status)
    if result.errors:
        lines = result.errors
    elif status == "Remediated":
        lines = result.actions
    elif status == "Drifted":
        lines = result.drift
    else:
        lines = []
    return "; ".join(lines) or "no change needed"


def check_result(
    job: JobFacts,
    outcome: PodOutcome | None,
    spec: NodeSysctlPolicySpec,
    current_spec_hash: str,
    now: datetime,
) -> NodeResult:
    """The Node result of a finished check: the agent's own verdict when its pod left a
    readable one, else Failed with the reason the Job (or the unreadable message) gives."""

    def failed(message: str) -> NodeResult:
        return NodeResult(NodeState.FAILED, current_spec_hash, job.boot_id, now, job.name, message)

    if outcome is None or not outcome.message.strip():
        return failed(job.failure_reason or "the agent reported no result")
    try:
        agent = AgentResult.parse_termination_message(outcome.message)
    except ValueError as exc:
        return failed(f"unreadable agent result: {exc}")
    state = NodeState(str(agent.status))
    return NodeResult(
        status=state,
        spec_hash=current_spec_hash,
        boot_id=job.boot_id,
        checked_at=now,
        job=job.name,
        message=summarize_agent_result(agent),
        restart_pending=state == NodeState.REMEDIATED and wants_restart(spec),
    )
