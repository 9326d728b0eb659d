"""What the operator lets a policy run privileged (`nodesysctl.admission.admit`): the image and
the PriorityClass come from the operator's configuration, whatever the CRD accepts."""

from __future__ import annotations

from typing import Any

import pytest

from nodesysctl.admission import admit
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings

DEFAULTS = JobSettings()
OPERATOR_IMAGE = "registry.example/nodesysctl@sha256:" + "a" * 64
ALLOWED = JobSettings(
    image=OPERATOR_IMAGE,
    allowed_images=("registry.example/agent@sha256:" + "b" * 64,),
    allowed_priority_classes=("nodesysctl-agent",),
)


def problems(job: dict[str, Any], settings: JobSettings = DEFAULTS) -> list[str]:
    return admit(parse_spec({"job": job}), settings)


def test_a_policy_that_names_neither_is_admitted() -> None:
    assert problems({}) == []
    assert problems({"image": "", "priorityClassName": ""}) == []


def test_by_default_only_the_operator_image_runs() -> None:
    assert problems({"image": DEFAULTS.image}) == []
    assert problems({"image": "evil.example/rootkit:latest"}) == [
        'spec.job.image: "evil.example/rootkit:latest" is not in the operator\'s '
        "--allowed-agent-images; leave job.image empty to run the operator's agent image"
    ]


@pytest.mark.parametrize(
    "image",
    [
        "registry.example/agent:1",  # the allowed image by tag instead of its digest
        "registry.example/agent@sha256:" + "c" * 64,
        "registry.example/agent@sha256:" + "b" * 64 + " ",
        DEFAULTS.image,  # the default image, but this operator runs another one
    ],
)
def test_an_image_runs_only_if_the_allowlist_names_it_exactly(image: str) -> None:
    assert problems({"image": image}, ALLOWED) != []


def test_the_allowlist_and_the_operator_image_run() -> None:
    assert problems({"image": ALLOWED.allowed_images[0]}, ALLOWED) == []
    assert problems({"image": OPERATOR_IMAGE}, ALLOWED) == []


def test_no_priority_class_is_allowed_by_default() -> None:
    assert problems({"priorityClassName": "system-node-critical"}) == [
        'spec.job.priorityClassName: "system-node-critical" is not in the operator\'s '
        "--allowed-priority-classes; leave it empty to run without a PriorityClass"
    ]
    assert problems({"priorityClassName": "nodesysctl-agent"}, ALLOWED) == []
    assert problems({"priorityClassName": "system-node-critical"}, ALLOWED) != []


def test_every_refusal_is_listed() -> None:
    refused = problems({"image": "evil.example/x:1", "priorityClassName": "system-node-critical"})
    assert [problem.split(":", 1)[0] for problem in refused] == [
        "spec.job.image",
        "spec.job.priorityClassName",
    ]
