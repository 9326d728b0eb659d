"""Fault matrix harness: the e2e fixtures (the operator as a real process) plus a fake agent
image and the invariants every case must end in.

The matrix restarts etcd and kube-apiserver and waits out Job deadlines (~3 min), so it runs
only with NODESYSCTL_FAULTS=1 (`make test` and `make faults` set it); plain `pytest` lists the
cases as skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The operator process, policies and job namespace fixtures are the e2e harness's own.
from tests.e2e.conftest import (  # noqa: F401
    job_namespace,
    policies,
    pytest_runtest_makereport,
    start_operator,
)

FAULTS_ENV = "NODESYSCTL_FAULTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(FAULTS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"fault matrix: run with `make faults` ({FAULTS_ENV}=1)")
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(skip)


class FaultyAgent:
    """An "agent image" for the operator's --agent-python: per node (NODE_NAME, from the Job's
    downward API) it hangs, hangs on its first run only, or writes a garbage termination
    message; every other node runs the real agent."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "faulty-agent.sh"
        self.marks = directory / "marks"
        self.marks.mkdir(exist_ok=True)
        self.hang: list[str] = []
        self.hang_once: list[str] = []
        self.garbage: list[str] = []

    def write(self) -> str:
        def case(names: list[str], action: str) -> str:
            return f"  {'|'.join(names)}) {action} ;;\n" if names else ""

        script = (
            "#!/bin/bash\n"
            "# argv: -m nodesysctl.agent --spec-json J ... --termination-log T\n"
            'log=""; prev=""\n'
            'for arg in "$@"; do [ "$prev" = --termination-log ] && log="$arg"; prev="$arg"; done\n'
            'case "$NODE_NAME" in\n'
            + case(self.hang, "exec sleep 3600")
            + case(self.garbage, 'printf \'{"status": "Compl\' > "$log"; exit 0')
            + case(
                self.hang_once,
                f'mkdir "{self.marks}/$NODE_NAME" 2>/dev/null && exec sleep 3600',
            )
            + "esac\n"
            + f'exec {sys.executable} "$@"\n'
        )
        self.path.write_text(script)
        self.path.chmod(0o755)
        return str(self.path)


@pytest.fixture
def faulty_agent(tmp_path: Path) -> FaultyAgent:
    return FaultyAgent(tmp_path)
