"""Reading agent Job and Pod bodies into facts (no cluster, plain dicts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from nodesysctl.labels import (
    ANNOTATION_BOOT_ID,
    ANNOTATION_NODE,
    LABEL_JOB_NAME,
    LABEL_JOB_NAME_LEGACY,
    LABEL_POLICY,
    LABEL_SPEC_HASH,
)
from nodesysctl.observed import PodOutcome, job_facts_from_body
from nodesysctl.planning import JobFacts


def agent_pod(labels: dict[str, str], statuses: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"labels": labels}, "status": {"containerStatuses": statuses}}


def terminated(name: str = "agent", **state: Any) -> dict[str, Any]:
    return {"name": name, "state": {"terminated": state}}


def test_pod_outcome_reads_the_agent_containers_termination() -> None:
    body = agent_pod(
        {LABEL_JOB_NAME: "job-a"},
        [
            terminated("sidecar", exitCode=9, message="not ours"),
            terminated(exitCode=1, message='{"status":"Failed"}', reason="Error"),
        ],
    )
    assert PodOutcome.from_body(body) == PodOutcome("job-a", 1, '{"status":"Failed"}', "Error")


def test_pod_outcome_accepts_the_legacy_job_label_and_missing_fields() -> None:
    body = agent_pod({LABEL_JOB_NAME_LEGACY: "job-b"}, [terminated(exitCode=0, message=None)])
    assert PodOutcome.from_body(body) == PodOutcome("job-b", 0, "", "")


@pytest.mark.parametrize(
    "body",
    [
        {},  # nothing at all
        agent_pod({}, [terminated(exitCode=0)]),  # not a Job's pod
        agent_pod({LABEL_JOB_NAME: "job-a"}, []),  # not started
        agent_pod({LABEL_JOB_NAME: "job-a"}, [{"name": "agent", "state": {"running": {}}}]),
        {"metadata": {"labels": {LABEL_JOB_NAME: "job-a"}}, "status": None},
    ],
)
def test_pod_outcome_is_none_until_the_agent_terminated(body: dict[str, Any]) -> None:
    assert PodOutcome.from_body(body) is None


def agent_job(conditions: list[dict[str, Any]] | None = None, **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "job-a",
        "creationTimestamp": "2026-11-25T12:00:00Z",
        "labels": {LABEL_POLICY: "p", LABEL_SPEC_HASH: "h1"},
        "annotations": {ANNOTATION_NODE: "n1", ANNOTATION_BOOT_ID: "boot-1"},
    }
    metadata.update(meta)
    return {"metadata": metadata, "status": {"conditions": conditions or []}}


def test_job_facts_of_a_running_job() -> None:
    assert job_facts_from_body(agent_job()) == JobFacts(
        name="job-a",
        policy="p",
        node="n1",
        spec_hash="h1",
        boot_id="boot-1",
        created_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    )


def test_job_facts_of_a_completed_job() -> None:
    facts = job_facts_from_body(agent_job([{"type": "Complete", "status": "True"}]))
    assert facts is not None
    assert (facts.finished, facts.succeeded, facts.failure_reason) == (True, True, "")


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        (
            {"reason": "DeadlineExceeded", "message": "Job was active too long"},
            "DeadlineExceeded: Job was active too long",
        ),
        ({"reason": "BackoffLimitExceeded"}, "BackoffLimitExceeded"),
        ({}, "Failed"),
    ],
)
def test_job_facts_of_a_failed_job_say_why(condition: dict[str, Any], reason: str) -> None:
    failed = {"type": "Failed", "status": "True", **condition}
    facts = job_facts_from_body(agent_job([{"type": "Complete", "status": "False"}, failed]))
    assert facts is not None
    assert (facts.finished, facts.succeeded, facts.failure_reason) == (True, False, reason)


def test_job_facts_tolerate_missing_optional_fields() -> None:
    body = agent_job(labels={LABEL_POLICY: "p"}, annotations={ANNOTATION_NODE: "n1"})
    facts = job_facts_from_body(body)
    assert facts is not None
    assert (facts.spec_hash, facts.boot_id) == ("", "")


@pytest.mark.parametrize(
    "meta",
    [
        {"labels": {}},  # no policy label
        {"annotations": {}},  # no node annotation
    ],
)
def test_job_facts_are_none_for_other_jobs(meta: dict[str, Any]) -> None:
    assert job_facts_from_body(agent_job(**meta)) is None


def test_pod_outcome_keeps_what_verification_needs() -> None:
    body = agent_pod({LABEL_JOB_NAME: "job-a"}, [terminated(exitCode=0, message="{}")])
    body["metadata"].update(
        name="job-a-x7k2p",
        ownerReferences=[
            {"apiVersion": "v1", "kind": "ConfigMap", "uid": "cm-uid"},
            {"apiVersion": "batch/v1", "kind": "Job", "uid": "job-uid", "controller": True},
        ],
    )
    body["spec"] = {"nodeName": "n1"}
    outcome = PodOutcome.from_body(body)
    assert outcome is not None
    assert (outcome.pod, outcome.owner_uid, outcome.node) == ("job-a-x7k2p", "job-uid", "n1")


@pytest.mark.parametrize(
    "refs",
    [
        [],  # a bare pod
        [{"apiVersion": "batch/v1", "kind": "Job", "uid": "job-uid"}],  # not the controller
        [{"apiVersion": "batch/v1", "kind": "Job", "uid": "job-uid", "controller": False}],
        [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "uid": "job-uid", "controller": True}],
        [{"apiVersion": "example.com/v1", "kind": "Job", "uid": "job-uid", "controller": True}],
    ],
)
def test_only_a_jobs_controller_reference_owns_a_pod(refs: list[dict[str, Any]]) -> None:
    body = agent_pod({LABEL_JOB_NAME: "job-a"}, [terminated(exitCode=0)])
    body["metadata"]["ownerReferences"] = refs
    outcome = PodOutcome.from_body(body)
    assert outcome is not None
    assert (outcome.owner_uid, outcome.node) == ("", "")


def policy_owner(uid: str, **ref: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nodesysctl.io/v1alpha1",
        "kind": "NodeSysctlPolicy",
        "name": "p",
        "uid": uid,
        "controller": True,
        **ref,
    }


def test_job_facts_keep_the_jobs_uid_and_its_controlling_policy() -> None:
    body = agent_job(uid="job-uid", ownerReferences=[policy_owner("policy-uid")])
    facts = job_facts_from_body(body)
    assert facts is not None
    assert (facts.uid, facts.owner_uid) == ("job-uid", "policy-uid")
    # Any version of the group: a Job created under v1alpha1 stays the policy's.
    later = agent_job(ownerReferences=[policy_owner("policy-uid", apiVersion="nodesysctl.io/v1")])
    assert getattr(job_facts_from_body(later), "owner_uid", None) == "policy-uid"


@pytest.mark.parametrize(
    "refs",
    [
        [],
        [policy_owner("policy-uid", controller=False)],
        [policy_owner("policy-uid", kind="SomethingElse")],
        [policy_owner("policy-uid", apiVersion="evil.example/v1alpha1")],
    ],
)
def test_a_job_without_the_policy_as_controller_has_no_owner(refs: list[dict[str, Any]]) -> None:
    facts = job_facts_from_body(agent_job(uid="job-uid", ownerReferences=refs))
    assert facts is not None
    assert facts.owner_uid == ""
