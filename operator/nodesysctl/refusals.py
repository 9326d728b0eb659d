"""What the API server's refusals mean for a policy: whose fault they are, and what a pass reports.

Two kinds of refusal reach a pass:

- an answer to one of its own requests (`nodesysctl.kube.KubeError`, as plain data here:
  `ApiRefusal`). `classify` decides whose fault it is: the policy's values (400, 422, or an
  admission policy or webhook refusing the request: the user fixes the spec, and retrying the
  same spec can only be refused again) or not the user's at all (RBAC, throttling, an API server
  or etcd in trouble, no answer: retried with backoff);
- the Job controller's `FailedCreate`: the agent Job was admitted but the cluster refuses its
  pod (Pod Security, a ResourceQuota, a LimitRange, Kyverno or Gatekeeper). Kubernetes 1.36's Job
  controller records it only as an Event on the Job (reason FailedCreate, "Error creating: ...",
  one per attempt) and sets no Job condition: the Job just has no pod until its
  activeDeadlineSeconds. `podless_jobs` says when a pass should look for those Events and
  `pod_refusals` reads them.

Pure core: plain data in, plain data out; no client, no Kopf (docs/reliability.md, "API refusals").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, parse_time

# A Job's pod is normally created within a second; a Job still without one after this long is
# worth one Event list per pass (and only then: a healthy rollout lists no Events).
POD_CREATE_GRACE_SECONDS = 10.0
# The Job controller's Event reason (FailedCreatePodReason, pkg/controller/controller_utils.go).
FAILED_CREATE = "FailedCreate"

# How an admission policy or webhook words a denial, inside the 403 Status message:
#   jobs.batch "x" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: ...
#   admission webhook "validate.kyverno.svc-fail" denied the request: ...
# (a ValidatingAdmissionPolicy's denial is 422 Invalid unless its validation sets reason Forbidden).
_ADMISSION_DENIAL = re.compile(
    r"ValidatingAdmissionPolicy '[^']*' with binding '[^']*' denied request"
    r"|admission webhook \"[^\"]*\" denied the request"
)
# The ResourceQuota admission plugin's wording (k8s.io/apiserver resourcequota controller.go).
_QUOTA_USED = re.compile(r"exceeded quota: [^,]*, requested: .*?, used: (.*?), limited: ")
# How admission and validation refuse the pod: `pods "x" is forbidden: ...` (Pod Security, a
# quota, a LimitRange, RBAC), `pods "x" is invalid: ...`. A failing API server words it otherwise
# ("etcdserver: request timed out", "Internal error occurred: ...", "the server is currently
# unable to handle the request").
_POD_REFUSED = re.compile(r" is (?:forbidden|invalid): ")


class Refusal(StrEnum):
    """Whose fault a refused request is."""

    INVALID = "Invalid"  # the policy's values: report the policy Invalid, wait for an edit
    TRANSIENT = "Transient"  # not the user's: Degraded, retried with backoff


def classify(status: int, message: str) -> Refusal:
    """400 and 422 refuse what the request says, and so does an admission policy or webhook
    that denies it (403 naming the policy or webhook); everything else (401, RBAC's 403, a
    quota's 403, 404, 409, 429, 5xx, no answer at all) is not the user's to fix."""
    if status in (400, 422):
        return Refusal.INVALID
    if status == 403 and _ADMISSION_DENIAL.search(message):
        return Refusal.INVALID
    return Refusal.TRANSIENT


@dataclasses.dataclass(frozen=True)
class ApiRefusal:
    """What the API server answered (status 0: it did not answer), from its Status body."""

    status: int
    reason: str
    message: str

    @property
    def refusal(self) -> Refusal:
        return classify(self.status, self.message)

    @property
    def condition_reason(self) -> str:
        return "APIUnreachable" if self.status == 0 else "APIRefused"

    def describe(self) -> str:
        """One line: `403 Forbidden: jobs.batch is forbidden: ...`."""
        text = " ".join(self.message.split())
        if self.status == 0:
            return f"no answer from the API server: {text}"
        return f"{self.status} {self.reason}: {text}" if self.reason else f"{self.status}: {text}"


def job_refused_message(job: str, refusal: ApiRefusal) -> str:
    """The Invalid condition's message (and the Event's) when the agent Job is refused."""
    return f"the API server refused agent Job {job}: {refusal.describe()}"


# --- Pods the Job controller could not create ----------------------------------------------


def podless_jobs(
    policy: str,
    current_spec_hash: str,
    nodes: Sequence[NodeFacts],
    jobs: Iterable[JobFacts],
    now: datetime,
    node_hashes: Mapping[str, str] | None = None,
) -> list[JobFacts]:
    """The running checks of the current spec that still have no pod POD_CREATE_GRACE_SECONDS
    after their Job was created: the only ones a FailedCreate Event can be about.
    `node_hashes` overrides `current_spec_hash` per node (`planning.node_spec_hash`)."""
    selected = {node.name for node in nodes}
    hashes = node_hashes or {}
    grace = timedelta(seconds=POD_CREATE_GRACE_SECONDS)
    return sorted(
        (
            job
            for job in jobs
            if job.policy == policy
            and job.spec_hash == hashes.get(job.node, current_spec_hash)
            and job.node in selected
            and not job.finished
            and job.active == 0
            and now - job.created_at >= grace
        ),
        key=lambda job: job.name,
    )


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    try:
        return parse_time(str(stamp)) if stamp else None
    except ValueError:
        return None


def quota_in_use(message: str) -> bool:
    """A quota refusal that other pods' usage causes (`used:` not all zero): their checks end
    and free it, and the Job controller's next attempt succeeds. A quota this pod alone
    exceeds (`used: pods=0`) is refused for good."""
    match = _QUOTA_USED.search(message)
    if match is None:
        return False
    used = [part.partition("=")[2] for part in match.group(1).split(",")]
    return any(value not in ("", "0") for value in used)


def pod_refusal_lasts(message: str) -> bool:
    """Whether a FailedCreate message is the cluster refusing the pod for good: admission or
    validation said no (`_POD_REFUSED`, an admission denial). Not a failing API server (the Job
    controller's retries get through once it recovers), nor a quota other pods hold."""
    if quota_in_use(message):
        return False
    return bool(_POD_REFUSED.search(message) or _ADMISSION_DENIAL.search(message))


def pod_refusals(jobs: Iterable[JobFacts], events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Job name -> why its pod is refused, from the newest FailedCreate Event about it.

    An Event about another Job of the same name (an earlier one, deleted) is told apart by the
    Job's uid, or, where either side lacks one, by being older than the Job (to the second). A
    failure that goes away by itself (`pod_refusal_lasts` says which) is left to the Job
    controller's retries and the Job's deadline."""
    by_name = {job.name: job for job in jobs}
    newest: dict[str, tuple[datetime, str]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        job = by_name.get(str(involved.get("name", "")))
        if involved.get("kind") != "Job" or event.get("reason") != FAILED_CREATE or job is None:
            continue
        stamp = _event_time(event)
        if stamp is None:
            continue
        if job.uid and involved.get("uid"):
            if involved["uid"] != job.uid:
                continue
        elif stamp < job.created_at.replace(microsecond=0):
            continue
        seen = newest.get(job.name)
        if seen is None or stamp >= seen[0]:
            message = str(event.get("message") or "").removeprefix("Error creating: ")
            newest[job.name] = (stamp, " ".join(message.split()))
    return {name: text for name, (_, text) in newest.items() if pod_refusal_lasts(text)}


def refused_pod_result(
    job: JobFacts, message: str, current_spec_hash: str, now: datetime
) -> NodeResult:
    """The node's result when the cluster refuses its check's pod: Failed, with the reason.

    The node's check could not run, so it is Failed like any check that did not finish, and it
    counts against maxFailedNodes: a refusal of every agent pod (Pod Security on the job
    namespace, a zero quota) halts the rollout after that many nodes instead of refusing a Job
    per node (docs/reliability.md)."""
    return NodeResult(
        NodeState.FAILED,
        current_spec_hash,
        job.boot_id,
        now,
        job.name,
        f"pod creation refused: {message}",
    )
