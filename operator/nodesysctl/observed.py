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

from nodesysctl.labels import (
    ANNOTATION_BOOT_ID,
    ANNOTATION_NODE,
    LABEL_JOB_NAME,
    LABEL_JOB_NAME_LEGACY,
    LABEL_POLICY,
    LABEL_SPEC_HASH,
)
from nodesysctl.planning import JobFacts, parse_time


@dataclasses.dataclass(frozen=True)
class PodOutcome:
    """What the agent pod of a job reported when it terminated."""

    job: str
    exit_code: int | None
    message: str
    reason: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodOutcome | None:
        labels = (body.get("metadata") or {}).get("labels") or {}
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
        # The API server always sets creationTimestamp; the clock is only a fallback.
        created_at=parse_time(created) if created else datetime.now(UTC),
        finished=finished,
        succeeded=succeeded,
        failure_reason=failure,
    )
