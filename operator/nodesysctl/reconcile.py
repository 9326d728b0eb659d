"""One reconcile pass of one policy: the blocking I/O half of the operator, and only that.

The policy's daemon (`nodesysctl.daemon`) snapshots what the watches know (nodes, jobs, agent
pods) on the event loop, then runs `PolicyReconciler.run_once` in a worker thread. A pass asks
the pure modules what to do and carries their answers out in order: which nodes to check
(`nodesysctl.planning`), which finished checks become which results (`nodesysctl.results`),
what a restart wave does (`nodesysctl.restarts`), when to run again (`nodesysctl.pacing`);
bodies come from `nodesysctl.jobs` and `nodesysctl.policy_status`. The calls go through
`PassClient`, which `nodesysctl.kube.Kube` implements and the unit tests fake. Nothing here
imports Kopf.

What the API server refuses is judged by `nodesysctl.refusals`: an agent Job refused for the
policy's values makes the policy Invalid until its spec changes (no POST meanwhile); any other
failed call fails the pass with `Degraded` in the status, and the daemon backs off; a Job whose
pod the cluster refuses fails its node (docs/reliability.md, "API refusals").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from nodesysctl.admission import admit
from nodesysctl.api import (
    InvalidPolicy,
    Mode,
    NodeSysctlPolicySpec,
    RestartMode,
    RestartPods,
    parse_spec,
)
from nodesysctl.compose import NodeComposition, compose, precedence
from nodesysctl.jobs import (
    JobSettings,
    build_agent_job,
    build_node_result_patch,
    build_restart_patch,
)
from nodesysctl.kube import KubeError, node_ref, policy_ref, workload_ref
from nodesysctl.maintenance import (
    RESTARTS_DEFERRED_EVENT,
    MaintenanceGate,
    WindowState,
    check_only_spec,
    deferred_result,
    earliest,
    gate,
)
from nodesysctl.metrics import OPERATOR_METRICS, OperatorMetrics
from nodesysctl.node_taints import carry_out_readiness
from nodesysctl.observed import PodOutcome, job_facts_from_body
from nodesysctl.pacing import INVALID_POLL_SECONDS, RestartBudget, RestartLimiter, pass_delay
from nodesysctl.planning import (
    CheckOrder,
    JobFacts,
    NodeFacts,
    NodeResult,
    NodeState,
    PolicyRanges,
    conflict_notes,
    dirs_after_check,
    host_dirs,
    is_quiescent,
    node_spec_hash,
    plan_rollout,
    select_nodes,
    spec_hash,
)
from nodesysctl.policy_status import (
    INVALID_SPEC,
    JOB_REFUSED,
    StatusInputs,
    build_api_degraded_condition,
    build_conditions,
    build_invalid_conditions,
    build_status,
    condition_true,
    merge_conditions,
    reported_refusal,
    same_status,
    with_condition,
)
from nodesysctl.refusals import (
    FAILED_CREATE,
    ApiRefusal,
    Refusal,
    job_refused_message,
    pod_refusals,
    podless_jobs,
    refused_pod_result,
)
from nodesysctl.restarts import (
    EvictionResult,
    RestartAction,
    RestartPlan,
    WaveProgress,
    WorkloadStep,
    affected_pods,
    last_restart,
    needs_replica_sets,
    plan_restart_wave,
    remediated_at,
    resolve_owners,
    restart_wave,
    restarts_done,
    wave_status,
    wave_summary,
)
from nodesysctl.results import (
    jobs_to_record,
    judge_check,
    refused_check,
    verify_existing_job,
    verify_job,
    verify_outcome,
)

if TYPE_CHECKING:
    from nodesysctl.kube import Kube

logger = logging.getLogger(__name__)

# Independent writes of one pass (Job creations, node results, their events) go out this many
# at a time: one by one, a pass over 50 finished checks took longer than the checks themselves
# and the rollout ran at 1.4x the floor's time (docs/performance.md).
IO_PARALLELISM = 8


class PassClient(Protocol):
    """Exactly the API calls a pass makes (controller-runtime's narrow client interfaces)."""

    def create_job(self, body: Mapping[str, Any]) -> bool: ...

    def get_job(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def delete_job(self, namespace: str, name: str) -> None: ...

    def job_events(self, namespace: str, reason: str) -> Sequence[Mapping[str, Any]]: ...

    def job_pods(self, namespace: str, job: str) -> Sequence[Mapping[str, Any]]: ...

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None: ...

    def get_node(self, name: str) -> Mapping[str, Any] | None: ...

    def json_patch_node(self, name: str, patch: Sequence[Mapping[str, Any]]) -> None: ...

    def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None: ...

    def list_pods(self, *, host_network_only: bool) -> Sequence[Mapping[str, Any]]: ...

    def list_replica_sets(self) -> Sequence[Mapping[str, Any]]: ...

    def get_workload(self, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    def evict_pod(self, namespace: str, name: str, uid: str) -> tuple[EvictionResult, str]: ...

    def patch_workload(
        self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> None: ...

    def post_event(
        self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str
    ) -> None: ...


if TYPE_CHECKING:

    def _kube_is_a_pass_client(kube: Kube) -> PassClient:
        return kube  # mypy fails here when Kube no longer has a call a pass makes


class Claims(Protocol):
    """At most one agent Job per node across all policies (`nodesysctl.state.NodeClaims`): a
    pass claims a node before it creates a Job there, and gives the claim back when it did not.
    Called from the pass's worker threads."""

    def claim(self, node: str, policy: str, job: str) -> bool: ...

    def release(self, node: str, job: str) -> None: ...


class _NoClaims:
    """For a reconciler on its own (tests): every claim is granted."""

    def claim(self, node: str, policy: str, job: str) -> bool:
        return True

    def release(self, node: str, job: str) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the watches knew at the start of a pass (copied on the event loop)."""

    name: str
    uid: str
    generation: int
    created: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    nodes: Sequence[NodeFacts]
    jobs: Sequence[JobFacts]
    pod_outcomes: Mapping[str, Sequence[PodOutcome]]  # by the job-name label the pods carry
    other_policies: Sequence[PolicyRanges]  # every other valid policy not being deleted
    # Nodes where another policy's agent Job runs (or is about to): not checked this pass.
    busy: Collection[str] = frozenset()
    # Nodes still carrying a readiness taint (`NodeFacts.readiness_taints`): fixed, and
    # their DaemonSet pods evicted, whatever the windows.
    unverified: Collection[str] = frozenset()


class JobRefusedError(Exception):
    """The API server refused an agent Job for what it says (`Refusal.INVALID`)."""

    def __init__(self, job: str, refusal: ApiRefusal) -> None:
        super().__init__(job_refused_message(job, refusal))
        self.job = job
        self.refusal = refusal


@dataclasses.dataclass(frozen=True)
class PassResult:
    delay: float
    recorded: Mapping[str, NodeResult]  # node -> result written this pass (write-through)
    # Nodes due for a check that another agent Job occupied: a Job event there wakes us.
    queued: Collection[str] = frozenset()


@dataclasses.dataclass
class KeptWave:
    """A restart wave's plan, kept from the pass that made it until the wave is complete (the
    pods and ReplicaSets are listed once per wave, not once per rate-limited pass), and what
    the passes did of it. Lost with the process: a restarted operator plans the wave again,
    and the rule that only pods started before the remediation count keeps it from
    restarting anything twice."""

    key: str  # the wave id and the restart settings it was planned with
    plan: RestartPlan
    progress: WaveProgress
    announced: bool = False  # the skipped paused Deployments' Events went out
    deferred: bool = False  # the Event that the restart window holds the wave went out


@dataclasses.dataclass(frozen=True)
class WaveOutcome:
    """What a pass did with the restart wave, for the status and the next pass's delay."""

    complete: bool = False
    last_restart: Mapping[str, Any] | None = None
    wave_status: Mapping[str, Any] | None = None
    wait: float | None = None  # seconds until the wave can go on (tokens, budget, a retry)
    held: int = 0  # steps the restart window holds


def _kept_report(status: Mapping[str, Any], spec: NodeSysctlPolicySpec) -> Mapping[str, Any] | None:
    """A reported wave (`restart.mode: Report`) stays in the status until the next wave, so the
    dry run can be read at leisure; a wave carried out leaves once it is complete."""
    previous = status.get("restartWave")
    reporting = spec.restart is not None and spec.restart.mode == RestartMode.REPORT
    return previous if reporting and previous and previous.get("mode") == "Report" else None


def admitted(policies: Iterable[PolicyRanges], settings: JobSettings) -> list[PolicyRanges]:
    """The policies whose values may be applied: one the operator's allowlists refuse is
    Invalid (`admission.admit`) and applies nothing, not even through another's composition."""
    return [p for p in policies if not admit(p.spec, settings)]


class PolicyReconciler:
    def __init__(
        self,
        kube: PassClient,
        settings: JobSettings,
        limiter: RestartLimiter,
        *,
        protected_namespaces: Sequence[str] = (),
        claims: Claims | None = None,
        metrics: OperatorMetrics = OPERATOR_METRICS,
    ):
        self.kube = kube
        self.settings = settings
        self.limiter = limiter
        # Never restarted unless a policy names them (besides the system namespaces): the
        # operator's own namespace and the job namespace.
        self.protected_namespaces = (*protected_namespaces, settings.namespace)
        self.claims: Claims = claims or _NoClaims()
        self.metrics = metrics  # what the pass did, recorded as it is carried out
        self.io = ThreadPoolExecutor(IO_PARALLELISM, thread_name_prefix="nodesysctl-io")
        # By policy uid: the generation whose agent Job the API server refused, and why (the
        # status says so too, unless writing it failed); the policies whose failing passes
        # have posted their Event. Each policy's passes run one at a time, in its own thread.
        self.refused: dict[str, tuple[int, str]] = {}
        self.degraded: set[str] = set()
        self.waves: dict[str, KeptWave] = {}  # by policy
        # By policy uid (a new policy of the same name starts afresh): the budget last written,
        # in case the status a pass starts from is older than that write.
        self.budgets: dict[str, RestartBudget] = {}

    def _each(self, call: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`call` on every item, IO_PARALLELISM at a time; results in the items' order. All
        calls finish before the first error (if any) is raised, so a pass never leaves writes
        running behind it."""
        futures = [self.io.submit(call, item) for item in items]
        errors = [exc for future in futures if (exc := future.exception()) is not None]
        if errors:
            raise errors[0]
        return [future.result() for future in futures]

    # The pass ---------------------------------------------------------------------------

    def run_once(self, snap: Snapshot, now: datetime) -> PassResult:
        """One pass; raises when an API call fails (the daemon backs off), after reporting
        `Degraded` with the API server's answer, and reports the policy Invalid instead when
        the API server refuses its agent Job for what it says."""
        refused = self._refused_before(snap)
        if refused is not None:
            # Sending the same spec's Job again would be refused again: wait for an edit.
            self._report_invalid(snap, refused, now, JOB_REFUSED)
            result = PassResult(INVALID_POLL_SECONDS, {})
        else:
            try:
                result = self._pass(snap, now)
            except JobRefusedError as exc:
                logger.warning("policy %s: %s; waiting for the spec to change", snap.name, exc)
                self.refused[snap.uid] = (snap.generation, str(exc))
                self._report_invalid(snap, str(exc), now, JOB_REFUSED)
                # Results recorded before the refusal are echoed by the node watch; until then
                # they cannot cause a check: nothing is created for this generation any more.
                result = PassResult(INVALID_POLL_SECONDS, {})
            except KubeError as exc:
                self._report_degraded(snap, exc.refusal, now)
                raise
        self.degraded.discard(snap.uid)  # a pass went through: the next failure is news
        return result

    def _refused_before(self, snap: Snapshot) -> str | None:
        """Why this generation's agent Job was refused, if it was (this process remembers it;
        the status says it across restarts)."""
        generation, message = self.refused.get(snap.uid, (None, ""))
        if generation == snap.generation:
            return message
        self.refused.pop(snap.uid, None)  # an edit: try the new spec
        return reported_refusal(snap.status, snap.generation)

    def _pass(self, snap: Snapshot, now: datetime) -> PassResult:
        try:
            spec = parse_spec(snap.spec)
            if not_allowed := admit(spec, self.settings):
                raise InvalidPolicy(not_allowed)
        except InvalidPolicy as exc:
            self._report_invalid(snap, str(exc), now)
            return PassResult(INVALID_POLL_SECONDS, {})

        windows = gate(spec, now, snap.unverified)
        # The composition on each node the policy selects (`nodesysctl.compose`): who enforces
        # what there, and who conflicts with whom. A node another policy keeps is skipped.
        itself = PolicyRanges(snap.name, snap.created, spec)
        policies = precedence([itself, *admitted(snap.other_policies, self.settings)])
        compositions = {
            n.name: compose(n.name, n.labels, policies)
            for n in snap.nodes
            if spec.node_selector.matches(n.labels)
        }
        conflicts = [c for comp in compositions.values() for c in comp.conflicts]
        excluded = {name for name, comp in compositions.items() if comp.lost(snap.name)}
        selected = select_nodes(spec, snap.nodes, excluded)
        hashes = {n.name: node_spec_hash(snap.name, spec, compositions[n.name]) for n in selected}
        recorded = self._record_finished(
            snap, spec, selected, hashes, compositions, now, windows.rollout
        )
        pods_refused = self._record_refused_pods(snap, spec, selected, hashes, now)
        if pods_refused:  # their Jobs are deleted: they no longer hold their nodes' checks
            gone = {result.job for result in pods_refused.values()}
            snap = dataclasses.replace(snap, jobs=[j for j in snap.jobs if j.name not in gone])
        recorded = {**recorded, **pods_refused}
        selected = [n.with_result(snap.name, recorded.get(n.name)) for n in selected]
        # Readiness taints (`spec.readiness`): off the nodes verified now, back on rebooted ones.
        fresh = {n.name: n for n in selected}
        carry_out_readiness(
            self.kube,
            policy=itself,
            uid=snap.uid,
            policies=policies,
            nodes=[fresh.get(n.name, n) for n in snap.nodes],
            compositions=compositions,
            recorded=recorded,
            each=self._each,
        )

        # Only the policy's own Jobs run its checks: a foreign one neither holds a node's check
        # back nor counts against maxConcurrent, and it is never deleted as stale.
        own = [job for job in snap.jobs if verify_job(job, snap.uid).believed]
        plan = plan_rollout(
            policy=snap.name,
            spec=spec,
            nodes=selected,
            jobs=own,
            now=now,
            node_hashes=hashes,
            busy=snap.busy,
            may_fix=windows.fixes,
        )
        self._each(
            lambda stale: self.kube.delete_job(self.settings.namespace, stale), plan.stale_jobs
        )
        # At most one agent Job per node: another policy's pass may have claimed the node
        # since the snapshot; that node waits for the next pass.
        granted = [o for o in plan.checks if self.claims.claim(o.node, snap.name, o.job_name)]
        queued = {*plan.queued, *(o.node for o in plan.checks if o not in granted)}
        by_node = {n.name: n for n in selected}
        jobs = [
            self._agent_job(
                snap,
                check_only_spec(spec) if windows.check_only(order.node) else spec,
                order,
                compositions[order.node],
                by_node[order.node],
                hashes,
            )
            for order in granted
        ]
        try:
            created_all = self._create_checks(jobs)
        except Exception:
            for order in granted:
                self.claims.release(order.node, order.job_name)
            raise
        taken: list[CheckOrder] = []  # 409 AlreadyExists: whose Job holds the name?
        for order, created in zip(granted, created_all, strict=True):
            if created:
                logger.info(
                    "policy %s: checking node %s (%s, boot %s) with Job %s",
                    snap.name, order.node, order.reason, order.boot_id, order.job_name,
                )  # fmt: skip
            else:
                taken.append(order)
        refused = self._each(
            lambda order: self._refuse_foreign(snap, order, hashes[order.node], now), taken
        )
        for order, verdict in zip(taken, refused, strict=True):
            if verdict is not None:  # someone else's Job holds the name: no check of ours runs
                self.claims.release(order.node, order.job_name)
        recorded = {**recorded, **{o.node: r for o, r in zip(taken, refused, strict=True) if r}}
        if plan.halted and not condition_true(snap.status, "Degraded"):
            self.kube.post_event(
                policy_ref(snap.name, snap.uid),
                warning=True,
                reason="RolloutHalted",
                message=f"{plan.summary.failed} nodes failed (maxFailedNodes="
                f"{spec.rollout.max_failed_nodes}); no new checks until the policy changes",
            )

        previous_last = snap.status.get("lastRestart")
        wave = WaveOutcome()
        if is_quiescent(plan):
            wave = self._restart_wave(snap, spec, selected, now, windows)
            if wave.complete:
                recorded = {**recorded, **self._clear_restart_pending(snap.name, selected)}
        budget = self.budgets.get(snap.uid)

        fixes_waiting = windows.deferred_fixes(selected, snap.name)
        notes = conflict_notes(conflicts, snap.name)
        self._write_status(
            snap,
            StatusInputs(
                generation=snap.generation,
                mode=str(spec.remediation.mode),
                summary=plan.summary,
                halted=plan.halted,
                conflicts=notes,
                last_restart=wave.last_restart or previous_last,
                restart_wave=wave.wave_status or _kept_report(snap.status, spec),
                restart_budget=budget.as_status(now)
                if budget
                else snap.status.get("restartBudget"),
                more_conditions=windows.conditions(
                    windows.drifted(selected, snap.name, fixes_waiting), wave.held, snap.generation
                ),
            ),
            now,
        )
        if notes and not condition_true(snap.status, "Conflict"):
            self.kube.post_event(
                policy_ref(snap.name, snap.uid),
                warning=True,
                reason="PolicyConflict",
                message=notes[0],
            )

        delay = pass_delay(
            busy=bool(plan.checks or plan.summary.in_flight or queued),
            next_due_in=plan.next_due_in,
            next_token_in=earliest(wave.wait, windows.fixes_wait(fixes_waiting, now)),
        )
        return PassResult(delay, recorded, frozenset(queued))

    def _agent_job(
        self,
        snap: Snapshot,
        spec: NodeSysctlPolicySpec,
        order: CheckOrder,
        composition: NodeComposition,
        node: NodeFacts,
        hashes: Mapping[str, str],
    ) -> dict[str, Any]:
        """The Job of one check: an Enforce member applies the node's composed target (a
        check-only `spec`, in Audit mode, checks the policy's own values)."""
        enforcing = spec.remediation.mode == Mode.ENFORCE
        target = composition.target if enforcing and composition.is_member(snap.name) else None
        return build_agent_job(
            policy=snap.name,
            policy_uid=snap.uid,
            spec=spec,
            order=order,
            settings=self.settings,
            target=target,
            dirs=host_dirs(node, target) if target else None,
            check_hash=hashes[order.node],
            node=node.availability,
        )

    def _create_checks(self, jobs: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Create the checks' Jobs, the first one alone: the API server judges the policy's
        values alike in each, so when it refuses the first for them (`JobRefusedError`) the
        others are never sent: one refused POST per generation, not one per node."""
        first = self._each(self._create_job, jobs[:1])
        return first + self._each(self._create_job, jobs[1:])

    def _create_job(self, body: Mapping[str, Any]) -> bool:
        try:
            return self.kube.create_job(body)
        except KubeError as exc:
            if exc.refusal.refusal == Refusal.INVALID:
                raise JobRefusedError(body["metadata"]["name"], exc.refusal) from exc
            raise

    # Results ------------------------------------------------------------------------------

    def _record_finished(
        self,
        snap: Snapshot,
        spec: NodeSysctlPolicySpec,
        selected: Sequence[NodeFacts],
        hashes: Mapping[str, str],
        compositions: Mapping[str, NodeComposition],
        now: datetime,
        rollout: WindowState,
    ) -> dict[str, NodeResult]:
        """Turn each finished, not yet recorded Job of the current spec into a Node result."""
        todo = jobs_to_record(snap.name, "", selected, snap.jobs, node_hashes=hashes)
        by_node = {n.name: n for n in selected}

        def record(job: JobFacts) -> NodeResult:
            current = hashes[job.node]
            judged = judge_check(job, self._outcomes(snap, job), snap.uid, spec, current, now)
            judged = dataclasses.replace(judged, result=deferred_result(judged.result, rollout))
            composition = compositions[job.node]
            # A check-only run wrote nothing: where files may be stays what it was.
            fixing = composition.is_member(snap.name) and not judged.result.fix_deferred
            target = composition.target if fixing else None
            previous = by_node[job.node].results.get(snap.name)
            dirs = dirs_after_check(previous, target, judged.result.status)
            result = dataclasses.replace(judged.result, sysctl_dirs=dirs).as_stored()
            self.kube.patch_node(job.node, build_node_result_patch(snap.name, result))
            self.metrics.record_check(snap.name, result.status, _since(job.created_at, now))
            self._announce(snap, job.node, result, judged.event)
            for ignored in judged.ignored:
                self._post(snap, job.node, True, ignored.event, ignored.reason)
            for notice in judged.notices:  # a boot override, sockets in reserved ports
                self._post(snap, job.node, True, notice.reason, notice.message)
            return result

        return {
            job.node: result for job, result in zip(todo, self._each(record, todo), strict=True)
        }

    def _outcomes(self, snap: Snapshot, job: JobFacts) -> list[PodOutcome]:
        """The outcomes of pods that claim to be `job`'s: the watch's, and when none of those
        is believed (the Job's own pod not delivered yet), the API server's too."""
        seen = list(snap.pod_outcomes.get(job.name, ()))
        if any(verify_outcome(job, outcome, snap.uid).believed for outcome in seen):
            return seen
        if not verify_job(job, snap.uid).believed:
            return seen  # nothing its pods say counts
        pods = self.kube.job_pods(self.settings.namespace, job.name)
        fetched = [PodOutcome.from_body(pod) for pod in pods]
        known = {outcome.pod for outcome in seen}
        return seen + [o for o in fetched if o is not None and o.pod not in known]

    def _record_refused_pods(
        self,
        snap: Snapshot,
        spec: NodeSysctlPolicySpec,
        selected: Sequence[NodeFacts],
        hashes: Mapping[str, str],
        now: datetime,
    ) -> dict[str, NodeResult]:
        """Fail the nodes whose check's pod the cluster refuses to create (the Job controller's
        FailedCreate Events: Pod Security, a ResourceQuota, a LimitRange, an admission webhook),
        now rather than at the Job's deadline, and delete those Jobs (the Job controller would
        retry until then). Events are listed only while a Job has had no pod for a while, and
        only the policy's own Jobs count (a foreign one is neither failed nor deleted)."""
        current = spec_hash(spec)
        own = [job for job in snap.jobs if verify_job(job, snap.uid).believed]
        waiting = podless_jobs(snap.name, current, selected, own, now, node_hashes=hashes)
        if not waiting:
            return {}
        refusals = pod_refusals(
            waiting, self.kube.job_events(self.settings.namespace, FAILED_CREATE)
        )
        todo = [job for job in waiting if job.name in refusals]

        def record(job: JobFacts) -> NodeResult:
            result = refused_pod_result(job, refusals[job.name], hashes[job.node], now).as_stored()
            self.kube.patch_node(job.node, build_node_result_patch(snap.name, result))
            self.kube.delete_job(self.settings.namespace, job.name)
            self.metrics.record_check(snap.name, result.status, _since(job.created_at, now))
            logger.warning("policy %s: node %s: %s", snap.name, job.node, result.message)
            self._post(snap, job.node, True, "PodCreationRefused", result.message)
            return result

        return {
            job.node: result for job, result in zip(todo, self._each(record, todo), strict=True)
        }

    def _refuse_foreign(
        self, snap: Snapshot, order: CheckOrder, current: str, now: datetime
    ) -> NodeResult | None:
        """After 409 AlreadyExists: carry on if the Job holding the check's name is ours (a
        restarted operator, a retried pass); otherwise record the node Failed and report the
        Job. None when there is nothing to record."""
        body = self.kube.get_job(self.settings.namespace, order.job_name)
        if body is None:
            return None  # gone meanwhile: the next pass creates the check
        existing = job_facts_from_body(body)
        verdict = verify_existing_job(existing, order, snap.name, snap.uid, self.settings.namespace)
        if verdict.believed:
            return None
        result = refused_check(order, verdict, current, now).as_stored()
        self.kube.patch_node(order.node, build_node_result_patch(snap.name, result))
        self._announce(snap, order.node, result, verdict.event)
        return result

    def _announce(self, snap: Snapshot, node: str, result: NodeResult, event: str = "") -> None:
        events = {
            NodeState.REMEDIATED: (False, "Remediated"),
            NodeState.DRIFTED: (True, "DriftDetected"),
            NodeState.FAILED: (True, "CheckFailed"),
        }
        if event:
            self._post(snap, node, True, event, result.message)
        elif result.status in events:
            warning, reason = events[result.status]
            self._post(snap, node, warning, reason, result.message)

    def _post(self, snap: Snapshot, node: str, warning: bool, reason: str, message: str) -> None:
        """One Event on the Node and one on the policy, each naming the other."""
        self.kube.post_event(
            node_ref(node), warning=warning, reason=reason, message=f"{snap.name}: {message}"
        )
        self.kube.post_event(
            policy_ref(snap.name, snap.uid),
            warning=warning,
            reason=reason,
            message=f"node {node}: {message}",
        )

    # Restarts -----------------------------------------------------------------------------

    def _restart_wave(
        self,
        snap: Snapshot,
        spec: NodeSysctlPolicySpec,
        selected: Sequence[NodeFacts],
        now: datetime,
        windows: MaintenanceGate,
    ) -> WaveOutcome:
        """Restart the workloads the remediated nodes' fault touched, once per wave.

        The first pass of a wave lists the pods (host-network ones only, by default) and the
        ReplicaSets once, reads the affected workloads, and keeps the plan; every pass carries
        out as much of it as the cluster-wide rate limit and the policy's budget allow (the
        budget's tokens are written to the status before the restarts they pay for), retries
        refused evictions, and reports the wave complete once nothing is left to do. Outside
        the restart window (`windows`) the steps wait, all but the evictions on unverified
        nodes; the kept plan goes on at the next opening.
        """
        wave, nodes = restart_wave(selected, snap.name)
        restart = spec.restart
        if not wave or restart is None:
            self.waves.pop(snap.name, None)
            return WaveOutcome()
        if restart.mode == RestartMode.NEVER:
            self.waves.pop(snap.name, None)
            return WaveOutcome(complete=True)  # waiting from before the edit: nothing to do
        kept = self._kept_wave(snap, spec, selected, wave, nodes)
        plan, mode = kept.plan, str(restart.mode)
        if restart.mode == RestartMode.REPORT:
            self.waves.pop(snap.name, None)
            self._post_summary(snap, kept, restart.pods, report=True)
            return WaveOutcome(
                complete=True,
                last_restart=last_restart(plan, kept.progress, now, report=True),
                wave_status=wave_status(plan, kept.progress, mode),
            )
        if not kept.announced:
            for step in plan.skipped_paused:
                self.kube.post_event(
                    workload_ref(step.kind, step.namespace, step.name, step.uid),
                    warning=True,
                    reason="RestartSkipped",
                    message=f"paused Deployment not restarted after {snap.name} remediated "
                    f"nodes {', '.join(nodes[:5])}; resume it and restart by hand",
                )
            kept.announced = True

        allowed = windows.allowed(plan)  # the steps the restart window lets go now
        fresh = kept.progress.fresh(allowed)
        held = windows.held(kept.progress.open_steps(plan))
        if held and not kept.deferred:
            self._post_deferred(snap, windows, len(held))
            kept.deferred = True
        budget = RestartBudget.from_status(
            snap.status.get("restartBudget"), restart.max_per_hour
        ).later(self.budgets.get(snap.uid))
        paid = self.limiter.take_up_to(min(budget.available(now), len(fresh)))
        if paid:
            # Spent before the restarts it pays for: an operator killed in between restarts
            # fewer, never more than the budget.
            budget = budget.take(paid, now)
            self.kube.patch_policy_status(snap.name, {"restartBudget": budget.as_status(now)})
            self.budgets[snap.uid] = budget
        for step in [*kept.progress.retries_due(allowed, now), *fresh[:paid]]:
            kept.progress = self._carry_out(snap, step, kept.progress, plan, now)

        if kept.progress.complete(plan):
            self.waves.pop(snap.name, None)
            self._post_summary(snap, kept, restart.pods, report=False)
            return WaveOutcome(complete=True, last_restart=last_restart(plan, kept.progress, now))
        held = windows.held(kept.progress.open_steps(plan))
        waits = [kept.progress.next_retry_in(allowed, now), windows.restarts_wait(held, now)]
        if kept.progress.fresh(allowed):
            # A token from both: the cluster-wide limiter and the policy's budget.
            waits.append(max(self.limiter.seconds_until_token(), budget.seconds_until_token(now)))
            logger.info(
                "policy %s: restart wave %s waits for the rate limit or the budget (%d left)",
                snap.name, wave, len(kept.progress.open_steps(plan)),
            )  # fmt: skip
        return WaveOutcome(
            wave_status=wave_status(plan, kept.progress, mode),
            wait=min((w for w in waits if w is not None), default=None),
            held=len(held),
        )

    def _kept_wave(
        self,
        snap: Snapshot,
        spec: NodeSysctlPolicySpec,
        selected: Sequence[NodeFacts],
        wave: str,
        nodes: Sequence[str],
    ) -> KeptWave:
        """The wave's plan: kept from an earlier pass, or made now (one LIST of pods, one of
        ReplicaSets when a pod has one, one GET per affected workload)."""
        restart = spec.restart
        assert restart is not None
        key = f"{wave}:{restart.model_dump_json()}"
        kept = self.waves.get(snap.name)
        if kept is not None and kept.key == key:
            return kept
        remediated = remediated_at(selected, snap.name)
        pods = self.kube.list_pods(host_network_only=restart.pods == RestartPods.HOST_NETWORK)
        affected = affected_pods(
            pods, remediated, restart.pods, ignored_namespaces=[self.settings.namespace]
        )
        del pods  # the whole list is not kept, only the affected pods
        replica_sets = self.kube.list_replica_sets() if needs_replica_sets(affected) else []
        resolution = resolve_owners(affected, replica_sets, restart, self.protected_namespaces)
        refs = list(resolution.workloads)
        read = self._each(lambda r: self.kube.get_workload(r.kind, r.namespace, r.name), refs)
        plan = plan_restart_wave(
            wave=wave,
            nodes=nodes,
            remediated=remediated,
            resolution=resolution,
            bodies=dict(zip(refs, read, strict=True)),
            restart=restart,
        )
        logger.info(
            "policy %s: restart wave %s over %d nodes: %d affected pods, %d restarts, %d "
            "evictions planned", snap.name, wave, len(nodes), len(affected),
            len(plan.to_restart), len(plan.to_evict),
        )  # fmt: skip
        self.metrics.record_wave_plan(snap.name, plan)
        kept = KeptWave(key, plan, WaveProgress())
        self.waves[snap.name] = kept
        return kept

    def _carry_out(
        self,
        snap: Snapshot,
        step: WorkloadStep,
        progress: WaveProgress,
        plan: RestartPlan,
        now: datetime,
    ) -> WaveProgress:
        """One rollout restart or eviction, with its Event; the progress it makes."""
        ref = workload_ref(step.kind, step.namespace, step.name, step.uid)
        nodes = plan.nodes
        if step.action == RestartAction.RESTART:
            self.kube.patch_workload(
                step.kind, step.namespace, step.name, build_restart_patch(now, plan.wave)
            )
            self.metrics.record_restart(snap.name, step.kind, None)
            self.kube.post_event(
                ref,
                warning=False,
                reason="Restarted",
                message=f"rollout restart by NodeSysctlPolicy {snap.name} after remediation "
                f"of nodes {', '.join(nodes[:5])}: {step.reason}",
            )
            return progress.with_done(step)
        result, why = self.kube.evict_pod(step.namespace, step.pod, step.pod_uid)
        self.metrics.record_restart(snap.name, step.kind, result)
        if result == EvictionResult.BLOCKED:
            progress = progress.with_refusal(step, why, now)
            if step.key in progress.blocked:
                self.metrics.record_skipped(snap.name, RestartAction.EVICTION_BLOCKED)
                message = progress.outcome(step).reason
                self.kube.post_event(ref, warning=True, reason="EvictionBlocked", message=message)
                self.kube.post_event(
                    policy_ref(snap.name, snap.uid),
                    warning=True,
                    reason="EvictionBlocked",
                    message=f"{step.ident}: {message}; the wave goes on without it",
                )
            return progress
        if result == EvictionResult.EVICTED:
            self.kube.post_event(
                ref,
                warning=False,
                reason="Evicted",
                message=f"pod {step.pod} on node {step.node} evicted by NodeSysctlPolicy "
                f"{snap.name} after the node's remediation (only that node's pod)",
            )
        return progress.with_done(step)

    def _post_deferred(self, snap: Snapshot, windows: MaintenanceGate, held: int) -> None:
        message = windows.restarts_deferred(held)
        self.kube.post_event(
            policy_ref(snap.name, snap.uid), warning=False, reason=RESTARTS_DEFERRED_EVENT,
            message=message,
        )  # fmt: skip

    def _post_summary(
        self, snap: Snapshot, kept: KeptWave, pods: RestartPods, *, report: bool
    ) -> None:
        self.kube.post_event(
            policy_ref(snap.name, snap.uid),
            warning=False,
            reason="RestartReport" if report else "RestartWaveComplete",
            message=wave_summary(kept.plan, kept.progress, pods, report=report),
        )

    def _clear_restart_pending(
        self, policy: str, selected: Sequence[NodeFacts]
    ) -> dict[str, NodeResult]:
        cleared = restarts_done(selected, policy)
        for node, done in cleared.items():
            self.kube.patch_node(node, build_node_result_patch(policy, done))
        return cleared

    # Status -------------------------------------------------------------------------------

    def _write_status(self, snap: Snapshot, inputs: StatusInputs, now: datetime) -> None:
        self.metrics.record_status(snap.name, inputs.summary, inputs.halted)
        status = build_status(inputs)
        status["conditions"] = merge_conditions(
            snap.status.get("conditions") or [], build_conditions(inputs), now
        )
        if not same_status(snap.status, status):
            self.kube.patch_policy_status(snap.name, status)

    def _report_invalid(
        self, snap: Snapshot, message: str, now: datetime, reason: str = INVALID_SPEC
    ) -> None:
        conditions = merge_conditions(
            snap.status.get("conditions") or [],
            build_invalid_conditions(message, snap.generation, reason),
            now,
        )
        status = {"observedGeneration": snap.generation, "conditions": conditions}
        if same_status(snap.status, status):
            return  # reported already for this generation
        self.kube.patch_policy_status(snap.name, status)
        self.kube.post_event(
            policy_ref(snap.name, snap.uid), warning=True, reason=reason, message=message
        )

    def _report_degraded(self, snap: Snapshot, refusal: ApiRefusal, now: datetime) -> None:
        """A pass failed on an API call: say so in the status (if the API server takes that
        write) and, once per series of failures, in an Event. The pass's error is raised
        anyway; the daemon backs off, and the next successful pass clears the condition."""
        previous = snap.status.get("conditions") or []
        conditions = with_condition(
            previous, build_api_degraded_condition(refusal, snap.generation), now
        )
        if not same_status(snap.status, {"conditions": conditions}):
            try:
                self.kube.patch_policy_status(snap.name, {"conditions": conditions})
            except KubeError as exc:
                logger.debug("policy %s: could not write Degraded: %s", snap.name, exc)
        reported = any(
            c.get("type") == "Degraded" and c.get("reason") == refusal.condition_reason
            for c in previous
            if c.get("status") == "True"
        )
        if snap.uid not in self.degraded and not reported:
            self.kube.post_event(
                policy_ref(snap.name, snap.uid),
                warning=True,
                reason=refusal.condition_reason,
                message=refusal.describe(),
            )
        self.degraded.add(snap.uid)


def _since(created: datetime, now: datetime) -> float:
    return (now - created).total_seconds()
