"""The operator's settings: one source for the Job defaults, flags and environment agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodesysctl.cli import build_parser
from nodesysctl.config import OperatorConfig
from nodesysctl.jobs import (
    DEFAULT_AGENT_IMAGE,
    DEFAULT_AGENT_PYTHON,
    DEFAULT_JOB_NAMESPACE,
    JobSettings,
)

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "nodesysctl"


def test_the_operator_and_the_job_builder_take_their_defaults_from_one_place() -> None:
    assert OperatorConfig().job_settings() == JobSettings()
    assert JobSettings() == JobSettings(
        namespace=DEFAULT_JOB_NAMESPACE, image=DEFAULT_AGENT_IMAGE, python=DEFAULT_AGENT_PYTHON
    )
    # Written out once in the shipped code: a second copy could drift from the first.
    holders = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if DEFAULT_AGENT_IMAGE.rsplit(":", 1)[0] in path.read_text()
    ]
    assert holders == ["jobs.py"]


def test_the_environment_overrides_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODESYSCTL_JOB_NAMESPACE", "jobs")
    monkeypatch.setenv("NODESYSCTL_AGENT_IMAGE", "registry.example/agent:1")
    monkeypatch.setenv("NODESYSCTL_AGENT_PYTHON", "python3")
    monkeypatch.setenv("NODESYSCTL_RESTARTS_PER_MINUTE", "6")
    monkeypatch.setenv("NODESYSCTL_RESTART_BURST", "2")
    config = OperatorConfig.from_env()
    assert config == OperatorConfig("jobs", "registry.example/agent:1", "python3", 6.0, 2)
    assert config.job_settings() == JobSettings("jobs", "registry.example/agent:1", "python3")


def test_the_allowlists_are_comma_separated_and_empty_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OperatorConfig().job_settings().allowed_images == ()
    assert OperatorConfig().job_settings().allowed_priority_classes == ()
    monkeypatch.setenv("NODESYSCTL_ALLOWED_AGENT_IMAGES", "a.example/x@sha256:1, b.example/y:2,")
    monkeypatch.setenv("NODESYSCTL_ALLOWED_PRIORITY_CLASSES", "nodesysctl-agent")
    settings = OperatorConfig.from_env().job_settings()
    assert settings.allowed_images == ("a.example/x@sha256:1", "b.example/y:2")
    assert settings.allowed_priority_classes == ("nodesysctl-agent",)


def test_the_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODESYSCTL_ALLOWED_AGENT_IMAGES", "from.env/x:1")
    args = build_parser().parse_args(
        ["run", "--allowed-agent-images", "a.example/x:1,b.example/y:2"]
    )
    assert args.allowed_agent_images == ("a.example/x:1", "b.example/y:2")
    assert args.allowed_priority_classes == ()
    assert build_parser().parse_args(["run"]).allowed_agent_images == ("from.env/x:1",)
