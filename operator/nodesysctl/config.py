"""The operator's settings: flags of `nodesysctl run`, or the environment.

Kopf-free on purpose: `nodesysctl status` reads the defaults without importing the Kopf wiring
(which registers every handler on import). The Job defaults come from `nodesysctl.jobs`, the one
place they are defined.
"""

from __future__ import annotations

import dataclasses
import os

from nodesysctl.jobs import (
    DEFAULT_AGENT_IMAGE,
    DEFAULT_AGENT_PYTHON,
    DEFAULT_JOB_NAMESPACE,
    JobSettings,
)

DEFAULT_OPERATOR_NAMESPACE = "nodesysctl-system"


def split_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag or variable ("a, b,") as its items ("a", "b")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    job_namespace: str = DEFAULT_JOB_NAMESPACE
    agent_image: str = DEFAULT_AGENT_IMAGE
    agent_python: str = DEFAULT_AGENT_PYTHON
    restarts_per_minute: float = 30.0
    restart_burst: int = 10
    # Empty: a policy's job.image may name only agent_image, and no priority class at all.
    allowed_agent_images: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    # Where the operator runs (the Deployment passes its own namespace): never restarted by a
    # policy that does not name it, as the system namespaces and the job namespace.
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """`kopf run -m nodesysctl.handlers` reads its settings from the environment."""
        defaults = cls()
        return cls(
            job_namespace=os.environ.get("NODESYSCTL_JOB_NAMESPACE", defaults.job_namespace),
            agent_image=os.environ.get("NODESYSCTL_AGENT_IMAGE", defaults.agent_image),
            agent_python=os.environ.get("NODESYSCTL_AGENT_PYTHON", defaults.agent_python),
            restarts_per_minute=float(
                os.environ.get("NODESYSCTL_RESTARTS_PER_MINUTE", defaults.restarts_per_minute)
            ),
            restart_burst=int(os.environ.get("NODESYSCTL_RESTART_BURST", defaults.restart_burst)),
            allowed_agent_images=split_list(os.environ.get("NODESYSCTL_ALLOWED_AGENT_IMAGES", "")),
            allowed_priority_classes=split_list(
                os.environ.get("NODESYSCTL_ALLOWED_PRIORITY_CLASSES", "")
            ),
            operator_namespace=os.environ.get(
                "NODESYSCTL_OPERATOR_NAMESPACE", defaults.operator_namespace
            ),
        )

    def job_settings(self) -> JobSettings:
        return JobSettings(
            namespace=self.job_namespace,
            image=self.agent_image,
            python=self.agent_python,
            allowed_images=self.allowed_agent_images,
            allowed_priority_classes=self.allowed_priority_classes,
        )
