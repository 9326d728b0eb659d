"""Reading what the cluster shows into facts: our agent Jobs and their Pods.

Kopf's indices (`nodesysctl.handlers`) and the reconcile pass hand raw bodies to these
functions. They are pure, so the parsing is unit-tested on plain dicts, and the labels and
annotations the operator trusts (`nodesysctl.labels`) are read in this one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from nodesysctl import GROUP, KIND
from nodesysctl.labels import (
    ANNOTATION_BOOT_ID,
    ANNOTATION_NODE,
    LABEL_JOB_NAME,
    LABEL_JOB_NAME_LEGACY,
    LABEL_POLICY,
    LABEL_SPEC_HASH,
)
from nodesysctl.planning import JobFacts, parse_time


def controller_uid(meta: Mapping[str, Any], group: str, kind: str) -> str:
    """The uid of the controller ownerReference in `meta` if it points at a `kind` of API
    `group` (any version: a Job created under v1alpha1 stays the policy's under a later one);
    "" if there is none or it points at something else. Plain ownerReferences do not count:
    anything may list an owner, only the controller is the one that made the object."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") is not True:
            continue  # the API server allows at most one controller reference
        ref_group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        return str(ref.get("uid") or "") if (ref_group, ref.get("kind")) == (group, kind) else ""
    return ""


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """What the agent pod of a job reported when it terminated.

    `job` is what the pod's job-name label claims, which any pod can carry; `pod`, `owner_uid`
    (the uid of its controller ownerReference to a batch Job, "" without one) and `node` (its
    `spec.nodeName`) are what `nodesysctl.results.verify_outcome` checks before the message is
    believed.
    """

    job: str
    exit_code: int | None
    message: str
    reason: str
    pod: str = ""
    owner_uid: str = ""
    node: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodOutcome | None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        job = labels.get(LABEL_JOB_NAME) or labels.get(LABEL_JOB_NAME_LEGACY)
        if not job:
            return None
        for status in (body.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if status.get("name") == "agent" and terminated:
                return cls(
                    job=job,
                    exit_code=terminated.get("exitCode"),
                    message=terminated.get("message") or "",
                    reason=terminated.get("reason") or "",
                    pod=str(meta.get("name") or ""),
                    owner_uid=controller_uid(meta, "batch", "Job"),
                    node=str((body.get("spec") or {}).get("nodeName") or ""),
                )
        return None


def job_facts_from_body(body: Mapping[str, Any]) -> JobFacts | None:
    """An agent Job's facts; None for a Job that is not one of a policy's node checks."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if LABEL_POLICY not in labels or ANNOTATION_NODE not in annotations:
        return None
    finished = succeeded = False
    failure = ""
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            finished = succeeded = True
        elif cond.get("type") == "Failed":
            finished = True
            failure = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    created = meta.get("creationTimestamp")
    return JobFacts(
        name=str(meta.get("name", "")),
        policy=str(labels[LABEL_POLICY]),
        node=str(annotations[ANNOTATION_NODE]),
        spec_hash=str(labels.get(LABEL_SPEC_HASH, "")),
        boot_id=str(annotations.get(ANNOTATION_BOOT_ID, "")),
        active=int((body.get("status") or {}).get("active") or 0),
        # The API server always sets creationTimestamp; the clock is only a fallback.
        created_at=parse_time(created) if created else datetime.now(UTC),
        finished=finished,
        succeeded=succeeded,
        failure_reason=failure,
        uid=str(meta.get("uid") or ""),
        owner_uid=controller_uid(meta, GROUP, KIND),
    )
