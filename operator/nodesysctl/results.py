"""From finished checks to Node results: which finished Jobs count, what their agent said, and
whether to believe it.

The reconcile pass fetches a missing pod outcome, writes each result onto its Node and announces
it; every decision before those writes is made here, on plain facts.

Labels are not evidence: any pod in the job namespace can carry a Job's job-name label, and any
Job our labels and node annotation. A result is believed only along the chain the operator and
the Job controller made: the policy (uid) is the Job's controller, the Job (uid) is the pod's
controller, and the pod ran on the node the Job was for (`verify_job`, `verify_outcome`).
Everything else is reported, once per Job, as a Failed node with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from nodesysctl import KIND
from nodesysctl.agent.contract import AgentResult, BootOverride, ConflictingSocket
from nodesysctl.api import Mode, NodeSysctlPolicySpec
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import (
    CheckOrder,
    JobFacts,
    NodeFacts,
    NodeResult,
    NodeState,
    wants_restart,
)

# The warning Events that report what was not believed.
FOREIGN_JOB = "ForeignJob"
UNTRUSTED_RESULT = "UntrustedResult"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a Job or an agent result is what it claims to be; if not, why, as a sentence
    for the Node result and the Events, and the Event reason that reports it."""

    believed: bool
    reason: str = ""
    event: str = ""


BELIEVED = Verdict(believed=True)


def verify_job(job: JobFacts, policy_uid: str) -> Verdict:
    """A Job counts as this policy's check of `job.node` only if the policy is its controller
    owner: the label and annotation say which policy and node, the owner uid says that this
    policy (not a deleted one of the same name, not a person) created it."""
    if policy_uid and job.uid and job.owner_uid == policy_uid:
        return BELIEVED
    return Verdict(
        False,
        f"Job {job.name} claims to check node {job.node} for {job.policy} but is not owned by "
        f"this {KIND} (uid {policy_uid}); nodesysctl did not create it",
        FOREIGN_JOB,
    )


def verify_outcome(job: JobFacts, outcome: PodOutcome, policy_uid: str) -> Verdict:
    """An agent result counts only from a pod that the Job (by uid) controls, that ran on the
    Job's node, of a Job that `verify_job` believes."""
    verdict = verify_job(job, policy_uid)
    if not verdict.believed:
        return verdict
    pod = outcome.pod or "(unnamed)"
    if outcome.owner_uid != job.uid:
        return Verdict(
            False,
            f"the agent result came from pod {pod}, which is not owned by Job {job.name}",
            UNTRUSTED_RESULT,
        )
    if outcome.node != job.node:
        return Verdict(
            False,
            f"the agent result came from pod {pod}, which ran on node {outcome.node or '(none)'}"
            f", not {job.node}",
            UNTRUSTED_RESULT,
        )
    return BELIEVED


def verify_existing_job(
    existing: JobFacts | None, order: CheckOrder, policy: str, policy_uid: str, namespace: str
) -> Verdict:
    """The Job found under a check's name when creating it met 409 AlreadyExists (`existing`:
    its facts, None when it is no agent Job at all): ours only if it is this policy's check of
    the same node. A restarted operator meets its own Jobs that way; anything else holds the
    name the check needs."""
    if (
        existing is not None
        and existing.policy == policy
        and existing.node == order.node
        and verify_job(existing, policy_uid).believed
    ):
        return BELIEVED
    return Verdict(
        False,
        f"a Job named {order.job_name} that nodesysctl did not create for this node exists in "
        f"{namespace}",
        FOREIGN_JOB,
    )


def refused_check(
    order: CheckOrder, verdict: Verdict, current_spec_hash: str, now: datetime
) -> NodeResult:
    """The Node result of a check that could not start because `verdict` refused the Job
    that holds its name. Failed for the current spec and boot, so `plan_rollout` does not
    retry the node until its recheck is due (whose check has another Job name) or the policy
    changes: the Job is reported once, not re-POSTed every pass."""
    return NodeResult(
        NodeState.FAILED, current_spec_hash, order.boot_id, now, order.job_name, verdict.reason
    )


def jobs_to_record(
    policy: str,
    current_spec_hash: str,
    nodes: Sequence[NodeFacts],
    jobs: Iterable[JobFacts],
    node_hashes: Mapping[str, str] | None = None,
) -> list[JobFacts]:
    """The finished Jobs of the current spec whose results `nodes` do not hold yet, by node name.
    `node_hashes` overrides `current_spec_hash` per node (`planning.node_spec_hash`).

    Only the newest finished Job of a node counts. An older one (a check before a reboot, or
    before a recheck, still within ttlSecondsAfterFinished) was superseded: recording it again
    would overwrite the newer result with a stale boot ID, which asks for yet another check,
    whose Job is again newer... a loop until the TTL removes the old Jobs.
    """
    by_name = {node.name: node for node in nodes}
    hashes = node_hashes or {}
    newest: dict[str, JobFacts] = {}
    for job in jobs:
        if not job.finished or job.node not in by_name:
            continue
        if job.spec_hash != hashes.get(job.node, current_spec_hash):
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


# Event reasons for what an agent found that must be heard even on a compliant node.
PERSIST_OVERRIDDEN = "PersistOverridden"  # OpenShift's Node Tuning Operator: TunedSysctlOverride
SOCKETS_IN_RESERVED_PORTS = "SocketsInReservedPorts"
# How many overrides and sockets a notice names (the Node annotation keeps 300 characters).
NOTICE_ITEMS = 2


@dataclasses.dataclass(frozen=True)
class Notice:
    reason: str  # the Event reason
    message: str


def _override_text(override: BootOverride) -> str:
    if override.value is None:
        return f"{override.file} leaves {override.key} unset"
    return f"{override.file} sets {override.key} = {override.value}"


def _socket_text(socket: ConflictingSocket) -> str:
    address = f"[{socket.local_address}]" if ":" in socket.local_address else socket.local_address
    text = f"{socket.proto} {address}:{socket.port} {socket.state}"
    if socket.remote_port:
        text += f" to {socket.remote_address}:{socket.remote_port}"
    kind = {"NodePortListener": "a NodePort-range listener", "EphemeralUse": "an ephemeral use"}
    return f"{text} ({kind.get(socket.kind, socket.kind)})" if socket.kind else text


def _first(items: Sequence[str], count: int) -> str:
    more = f", and {count - NOTICE_ITEMS} more" if count > NOTICE_ITEMS else ""
    return ", ".join(items[:NOTICE_ITEMS]) + more


def agent_notices(result: AgentResult) -> list[Notice]:
    """What the agent found that someone must hear of whatever the status: files that would
    undo the fix at boot, and sockets in reserved ports that are not a protected port's own
    service (a host service squatting NodePorts, an ephemeral port taken from a reserved range).
    An agent older than the socket kinds reported every socket there; those are not repeated."""
    notices = []
    if result.boot_overrides:
        overrides = [_override_text(o) for o in result.boot_overrides]
        count = max(result.boot_override_count, len(overrides))
        notices.append(
            Notice(
                PERSIST_OVERRIDDEN,
                f"{PERSIST_OVERRIDDEN}: at boot {_first(overrides, count)} after our file, "
                "undoing the fix",
            )
        )
    sockets = result.conflicting_sockets
    if result.conflicting_socket_count and (not sockets or any(s.kind for s in sockets)):
        count = result.conflicting_socket_count
        listed = f": {_first([_socket_text(s) for s in sockets], count)}" if sockets else ""
        notices.append(
            Notice(
                SOCKETS_IN_RESERVED_PORTS,
                f"{count} socket{'s' if count != 1 else ''} in reserved ports{listed}",
            )
        )
    return notices


def summarize_agent_result(result: AgentResult) -> str:
    """One line for the Node annotation, Events and `nodesysctl status`: what matters most
    for each outcome (the errors, the drift left, the fixes made), with the notices
    (`agent_notices`) first, except after errors."""
    status = str(result.status)
    notes = [notice.message for notice in agent_notices(result)]
    if result.errors:
        lines = [*result.errors, *notes]
    elif status == "Remediated":
        lines = [*notes, *result.actions]
    elif status == "Drifted" and result.boot_overrides and str(result.mode) == "Enforce":
        # What is left is the override, which the notice names; the rest was fixed.
        lines = [*notes, *result.actions]
    elif status == "Drifted":
        lines = [*notes, *result.drift]
    else:
        lines = notes
    return "; ".join(lines) or "no change needed"


def check_notices(outcome: PodOutcome | None) -> list[Notice]:
    """The notices of a finished check's agent result (none when it left no readable one)."""
    if outcome is None or not outcome.message.strip():
        return []
    try:
        return agent_notices(AgentResult.parse_termination_message(outcome.message))
    except ValueError:
        return []


def changed_the_kernel(agent: AgentResult) -> bool:
    """Whether the agent wrote a sysctl, not only a file: only a changed value in the running
    kernel is a reason to restart workloads (rewriting the persistence file, or moving an
    earlier version's per-policy file into the node's one file, changes nothing they see).
    The before/after values may be cut short in a long result; the actions name the writes
    first, so either tells."""
    values = ("ip_local_port_range", "ip_local_reserved_ports")
    moved = any(getattr(agent.before, v) != getattr(agent.after, v) for v in values)
    return moved or any(action.startswith("wrote net.") for action in agent.actions)


def check_result(
    job: JobFacts,
    outcome: PodOutcome | None,
    spec: NodeSysctlPolicySpec,
    current_spec_hash: str,
    now: datetime,
) -> NodeResult:
    """The Node result of a finished check: the agent's own verdict when its pod left a
    readable one, else Failed with the reason the Job (or the unreadable message) gives.
    Believes `outcome` as it is: `judge_check` hands it only outcomes `verify_outcome` believes."""
    if outcome is None or not outcome.message.strip():
        message = job.failure_reason or "the agent reported no result"
        return _failed(job, message, current_spec_hash, now)
    try:
        agent = AgentResult.parse_termination_message(outcome.message)
    except ValueError as exc:
        return _failed(job, f"unreadable agent result: {exc}", current_spec_hash, now)
    state = NodeState(str(agent.status))
    # Drifted in Enforce: the live values were fixed (`actions`) and a file undoes them at boot.
    changed = state == NodeState.REMEDIATED or (state == NodeState.DRIFTED and bool(agent.actions))
    return NodeResult(
        status=state,
        spec_hash=current_spec_hash,
        boot_id=job.boot_id,
        checked_at=now,
        job=job.name,
        message=summarize_agent_result(agent),
        restart_pending=changed and wants_restart(spec) and changed_the_kernel(agent),
        # An Enforce policy's check that ran check-only (outside its rollout window).
        fix_deferred=spec.remediation.mode == Mode.ENFORCE and agent.mode == Mode.AUDIT,
    )


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A finished check, judged: the Node result to write; `event`, the Event reason that
    announces it when it is a refusal ("" for the usual one of its state); `ignored`, the
    results not believed beside the one recorded (each reported too); `notices`, what the
    believed result found that is announced whatever the state (`agent_notices`)."""

    result: NodeResult
    event: str = ""
    ignored: tuple[Verdict, ...] = ()
    notices: tuple[Notice, ...] = ()


def judge_check(
    job: JobFacts,
    outcomes: Sequence[PodOutcome],
    policy_uid: str,
    spec: NodeSysctlPolicySpec,
    current_spec_hash: str,
    now: datetime,
) -> Judgement:
    """The Node result of a finished Job, from the pod outcomes that claim to be its own.

    A Job `verify_job` refuses is Failed, whatever its pods said. Among the outcomes
    `verify_outcome` believes, a successful attempt wins over a failed one (a Job retried
    after a failure completed with its last pod), then the pod name (deterministic). When only
    forged ones are left, the node is Failed with the first one's reason (and the Job's own
    failure, if any): a forged "Compliant" is never recorded."""
    refused = verify_job(job, policy_uid)
    if not refused.believed:
        return Judgement(_failed(job, refused.reason, current_spec_hash, now), refused.event)
    verdicts = [(outcome, verify_outcome(job, outcome, policy_uid)) for outcome in outcomes]
    believed = [outcome for outcome, verdict in verdicts if verdict.believed]
    ignored = tuple(verdict for _, verdict in verdicts if not verdict.believed)
    if believed:
        best = min(believed, key=lambda o: (o.exit_code != 0, o.pod))
        return Judgement(
            check_result(job, best, spec, current_spec_hash, now),
            ignored=ignored,
            notices=tuple(check_notices(best)),
        )
    if ignored:
        first, *rest = ignored
        message = "; ".join(filter(None, [first.reason, job.failure_reason]))
        return Judgement(_failed(job, message, current_spec_hash, now), first.event, tuple(rest))
    return Judgement(check_result(job, None, spec, current_spec_hash, now))


def _failed(job: JobFacts, message: str, current_spec_hash: str, now: datetime) -> NodeResult:
    return NodeResult(NodeState.FAILED, current_spec_hash, job.boot_id, now, job.name, message)
