"""Whose fault a refusal is, and what the Job controller's FailedCreate Events say about a node's
check (`nodesysctl.refusals`). The messages are the API server's and the Job controller's own,
copied from a v1.36 dev cluster."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodesysctl.observed import job_facts_from_body
from nodesysctl.planning import JobFacts, NodeFacts, NodeState, format_time
from nodesysctl.refusals import (
    POD_CREATE_GRACE_SECONDS,
    ApiRefusal,
    Refusal,
    classify,
    job_refused_message,
    pod_refusal_lasts,
    pod_refusals,
    podless_jobs,
    quota_in_use,
    refused_pod_result,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

VAP_DENIAL = (
    "jobs.batch \"nsc-p-1-2\" is forbidden: ValidatingAdmissionPolicy 'refuse-toleration' with "
    "binding 'refuse-toleration' denied request: Jobs here may not tolerate example.com/refuse-me"
)
WEBHOOK_DENIAL = (
    'admission webhook "validate.kyverno.svc-fail" denied the request: policy Job/nsc-p-1-2 '
    "for resource violation: disallow-privileged"
)
RBAC_DENIAL = (
    'jobs.batch is forbidden: User "system:serviceaccount:nodesysctl-system:nodesysctl-operator" '
    'cannot create resource "jobs" in API group "batch" in the namespace "nodesysctl-jobs"'
)
JOB_QUOTA = (
    'jobs.batch "nsc-p-1-2" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1'
)
PSA = (
    'pods "nsc-p-1-2-vszkn" is forbidden: violates PodSecurity "restricted:latest": host '
    'namespaces (hostNetwork=true), privileged (container "agent" must not set '
    "securityContext.privileged=true)"
)
ZERO_QUOTA = (
    'pods "nsc-p-1-2-qqhrx" is forbidden: exceeded quota: zero, requested: pods=1, used: pods=0, '
    "limited: pods=0"
)
BUSY_QUOTA = (
    'pods "nsc-p-1-2-hsw92" is forbidden: exceeded quota: one, requested: pods=1, used: pods=1, '
    "limited: pods=1"
)
LIMIT_RANGE = (
    'pods "nsc-p-1-2-6jqk6" is forbidden: maximum memory usage per Container is 64Mi, but limit '
    "is 128Mi"
)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "strict decoding error: unknown field", Refusal.INVALID),
        (422, 'Job.batch "x" is invalid: spec.template.spec.tolerations[0].key', Refusal.INVALID),
        (422, VAP_DENIAL.replace("is forbidden", "is invalid"), Refusal.INVALID),
        (403, VAP_DENIAL, Refusal.INVALID),
        (403, WEBHOOK_DENIAL, Refusal.INVALID),
        (403, RBAC_DENIAL, Refusal.TRANSIENT),
        (403, JOB_QUOTA, Refusal.TRANSIENT),
        (401, "Unauthorized", Refusal.TRANSIENT),
        (404, 'namespaces "nodesysctl-jobs" not found', Refusal.TRANSIENT),
        (409, "Operation cannot be fulfilled", Refusal.TRANSIENT),
        (429, "storage is (re)initializing", Refusal.TRANSIENT),
        (500, 'Internal error occurred: failed calling webhook "x"', Refusal.TRANSIENT),
        (503, "the server is currently unable to handle the request", Refusal.TRANSIENT),
        (0, "MaxRetryError: connection refused", Refusal.TRANSIENT),
    ],
)
def test_the_users_fault_is_what_the_request_says(
    status: int, message: str, expected: Refusal
) -> None:
    assert classify(status, message) == expected
    assert ApiRefusal(status, "Reason", message).refusal == expected


def test_a_refusal_reads_in_one_line() -> None:
    refused = ApiRefusal(403, "Forbidden", RBAC_DENIAL)
    assert refused.describe() == f"403 Forbidden: {RBAC_DENIAL}"
    assert refused.condition_reason == "APIRefused"
    gone = ApiRefusal(0, "Unreachable", "MaxRetryError:\n  connection refused")
    assert gone.describe() == "no answer from the API server: MaxRetryError: connection refused"
    assert gone.condition_reason == "APIUnreachable"
    assert job_refused_message("nsc-p-1-2", ApiRefusal(403, "Forbidden", VAP_DENIAL)) == (
        f"the API server refused agent Job nsc-p-1-2: 403 Forbidden: {VAP_DENIAL}"
    )


def job(name: str = "nsc-p-1-2", **change: Any) -> JobFacts:
    facts = JobFacts(name, "p", "n1", "hash", "boot-1", NOW - timedelta(seconds=30))
    return dataclasses.replace(facts, **change)


NODES = [NodeFacts("n1", {}, "boot-1", {}), NodeFacts("n2", {}, "boot-1", {})]


def test_only_running_checks_without_a_pod_for_a_while_are_looked_into() -> None:
    young = NOW - timedelta(seconds=POD_CREATE_GRACE_SECONDS - 1)
    jobs = [
        job("podless"),
        job("young", created_at=young),
        job("running", active=1),
        job("finished", finished=True),
        job("old-spec", spec_hash="older"),
        job("other-node", node="n9"),
        job("other-policy", policy="q"),
    ]
    assert [j.name for j in podless_jobs("p", "hash", NODES, jobs, NOW)] == ["podless"]


def failed_create(name: str, message: str, at: datetime, **involved: str) -> dict[str, Any]:
    """A FailedCreate Event as the Job controller records it (the legacy recorder's fields)."""
    return {
        "kind": "Event",
        "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": name, **involved},
        "reason": "FailedCreate",
        "message": f"Error creating: {message}",
        "type": "Warning",
        "firstTimestamp": format_time(at),
        "lastTimestamp": format_time(at),
        "eventTime": None,
        "source": {"component": "job-controller"},
    }


def test_the_newest_failed_create_of_each_job_is_its_reason() -> None:
    created = NOW - timedelta(seconds=30)
    events = [
        failed_create("a", LIMIT_RANGE, created + timedelta(seconds=1)),
        failed_create("a", PSA, created + timedelta(seconds=5)),
        failed_create("b", ZERO_QUOTA, created),
        failed_create("c", PSA, created - timedelta(seconds=5)),  # about an earlier Job "c"
        failed_create("d", PSA, created, kind="CronJob"),
        {**failed_create("e", PSA, created), "reason": "SuccessfulCreate"},
        failed_create("unknown", PSA, created),
    ]
    jobs = [job(name, created_at=created.replace(microsecond=900)) for name in "abcde"]
    assert pod_refusals(jobs, events) == {"a": PSA, "b": ZERO_QUOTA}


def test_with_uids_an_event_is_matched_to_its_job_by_uid() -> None:
    created = NOW - timedelta(seconds=30)
    events = [
        failed_create(
            "a", PSA, created - timedelta(minutes=5), uid="uid-a"
        ),  # the uid decides, not the clocks
        failed_create("b", PSA, created + timedelta(seconds=1), uid="uid-of-the-earlier-b"),
    ]
    jobs = [job(name, created_at=created, uid=f"uid-{name}") for name in "ab"]
    assert pod_refusals(jobs, events) == {"a": PSA}


def test_a_quota_other_checks_hold_is_waited_for_not_a_failure() -> None:
    assert quota_in_use(BUSY_QUOTA)
    assert not quota_in_use(ZERO_QUOTA)
    assert not quota_in_use(PSA)
    assert quota_in_use(
        "exceeded quota: q, requested: limits.memory=128Mi,pods=1, used: limits.memory=0,pods=2, "
        "limited: limits.memory=1Gi,pods=2"
    )
    events = [failed_create("a", BUSY_QUOTA, NOW)]
    assert pod_refusals([job("a", created_at=NOW - timedelta(seconds=20))], events) == {}


@pytest.mark.parametrize(
    ("message", "lasts"),
    [
        (PSA, True),
        (ZERO_QUOTA, True),
        (LIMIT_RANGE, True),
        ('pods "nsc-p-1-2-x" is invalid: spec.containers[0].resources.requests[memory]', True),
        ('pods is forbidden: User "system:serviceaccount:kube-system:job-controller" cannot', True),
        (WEBHOOK_DENIAL, True),
        (BUSY_QUOTA, False),
        ("etcdserver: request timed out", False),
        ('Internal error occurred: failed calling webhook "validate.kyverno.svc-fail"', False),
        ("the server is currently unable to handle the request (post pods)", False),
        (
            'Post "https://127.0.0.1:6443/api/v1/namespaces/j/pods": dial tcp: connection refused',
            False,
        ),
    ],
)
def test_only_a_refusal_by_the_clusters_configuration_lasts(message: str, lasts: bool) -> None:
    """A failing API server makes the Job controller's pod creation fail too: it retries, and
    the node must not be failed for a moment of etcd trouble."""
    assert pod_refusal_lasts(message) is lasts
    refused = pod_refusals([job("a")], [failed_create("a", message, NOW - timedelta(seconds=5))])
    assert refused == ({"a": message} if lasts else {})


def test_a_refused_pod_fails_its_node_with_the_reason() -> None:
    result = refused_pod_result(job(), PSA, "hash", NOW)
    assert result.status == NodeState.FAILED
    assert result.message == f"pod creation refused: {PSA}"
    assert (result.job, result.boot_id, result.spec_hash) == ("nsc-p-1-2", "boot-1", "hash")


def test_a_job_without_a_pod_reads_as_active_0() -> None:
    """What a v1.36 Job shows while the Job controller cannot create its pod: no condition, no
    `active`; once a pod exists, `active` counts it."""
    body: dict[str, Any] = {
        "metadata": {
            "name": "nsc-p-1-2",
            "labels": {"nodesysctl.io/policy": "p", "nodesysctl.io/spec-hash": "hash"},
            "annotations": {"nodesysctl.io/node": "n1"},
            "creationTimestamp": "2026-12-01T11:59:30Z",
        },
        "status": {"ready": 0, "startTime": "2026-12-01T11:59:30Z", "terminating": 0},
    }
    refused = job_facts_from_body(body)
    assert refused is not None
    assert (refused.active, refused.finished) == (0, False)
    assert podless_jobs("p", "hash", NODES, [refused], NOW) == [refused]
    running = job_facts_from_body({**body, "status": {"active": 1, "ready": 1}})
    assert running is not None
    assert running.active == 1
