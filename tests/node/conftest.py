"""Fixtures for tests that run the agent inside real network namespaces (root only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.node.netns_helpers import NetNs, netns_unavailable

REQUIRE_ENV = "NODESYSCTL_REQUIRE_NETNS"


def _cannot_run(reason: str) -> NoReturn:
    message = f"NETWORK NAMESPACE TESTS NOT RUN: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} (and {REQUIRE_ENV}=1 requires them)")
    pytest.skip(message)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A fresh, uniquely named network namespace with loopback up; always deleted."""
    reason = netns_unavailable()
    if reason:
        _cannot_run(reason)
    try:
        namespace = NetNs.create()
    except subprocess.CalledProcessError as exc:
        _cannot_run(f"`ip netns add` failed: {exc.stderr.decode(errors='replace').strip()}")
    try:
        namespace.run("ip", "link", "set", "lo", "up")
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def sysctl_dir(tmp_path: Path) -> Path:
    """Stands in for the host's /etc/sysctl.d that the Job mounts."""
    path = tmp_path / "sysctl.d"
    path.mkdir()
    return path


@pytest.fixture
def termination_log(tmp_path: Path) -> Path:
    return tmp_path / "termination-log"
