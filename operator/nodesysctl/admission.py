"""What a policy may make the operator run privileged: the choices the operator's own
configuration must allow, whatever the CRD accepts.

Every agent Job runs as root, privileged, with the host's network, on every selected node, in
Audit mode too. The CRD checks that the policy's values are well formed (`nodesysctl.api`); who
may decide which image runs there, and with which PriorityClass (a high one preempts the node's
workloads), is whoever runs the operator, not whoever can write a policy. So the image is the
operator's own `--agent-image` unless the operator's `--allowed-agent-images` lists the policy's
`job.image`, and a `job.priorityClassName` must be in `--allowed-priority-classes` (both empty
by default: the two fields are off until an admin turns them on).

`admit` is pure: the reconcile pass calls it right after `parse_spec` and reports its problems
as it reports an invalid spec (Invalid condition, an InvalidSpec Event, no Job) until the policy
is edited or the operator is configured otherwise.
"""

from __future__ import annotations

from nodesysctl.api import NodeSysctlPolicySpec
from nodesysctl.jobs import JobSettings


def admit(spec: NodeSysctlPolicySpec, settings: JobSettings) -> list[str]:
    """One "path: message" per choice of the policy the operator does not allow; [] if none."""
    problems = []
    image = spec.job.image
    if image and image != settings.image and image not in settings.allowed_images:
        problems.append(
            f'spec.job.image: "{image}" is not in the operator\'s --allowed-agent-images; '
            "leave job.image empty to run the operator's agent image"
        )
    priority_class = spec.job.priority_class_name
    if priority_class and priority_class not in settings.allowed_priority_classes:
        problems.append(
            f'spec.job.priorityClassName: "{priority_class}" is not in the operator\'s '
            "--allowed-priority-classes; leave it empty to run without a PriorityClass"
        )
    return problems
