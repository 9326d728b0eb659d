"""`nodesysctl run --liveness`: Kopf's health endpoint includes the node watch, which runs
outside Kopf (a stale watch fails the probe: tests/unit/test_nodewatch.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.cluster import DevCluster
from devcluster.waiting import wait_for

from .conftest import OperatorProcess

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_liveness_reports_the_node_watch(
    start_operator: Callable[..., OperatorProcess], node_factory: Any
) -> None:
    node_factory(netns=False)
    url = f"http://127.0.0.1:{free_port()}/healthz"
    start_operator("--liveness", url)
    health: dict[str, Any] = {}

    def listed() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                health.update(json.loads(response.read()))
        except (urllib.error.URLError, ConnectionError):
            return False  # not serving yet
        return bool(health.get("nodeWatch", {}).get("listed"))

    wait_for(listed, timeout=60, what="the liveness endpoint to report the listed nodes")
    report = health["nodeWatch"]
    assert report["nodes"] >= 1
    assert 0 <= report["secondsSinceContact"] < 60


def test_a_stale_node_watch_fails_the_liveness_probe(
    devcluster: DevCluster, job_namespace: str, tmp_path: Path
) -> None:
    # A real operator process whose staleness bound is below zero: its node watch counts as
    # stale at once, which must turn Kopf's health endpoint into an HTTP error.
    url = f"http://127.0.0.1:{free_port()}/healthz"
    code = (
        "import sys, nodesysctl.nodewatch as watch; watch.STALE_SECONDS = -1; "
        "from nodesysctl.cli import main; "
        f"sys.exit(main(['run', '--job-namespace', {job_namespace!r}, '--liveness', {url!r}]))"
    )
    env = {**os.environ, "KUBECONFIG": str(devcluster.kubeconfig)}
    with (tmp_path / "operator.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    status: list[int] = []

    def answered() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status.append(response.status)
        except urllib.error.HTTPError as exc:
            status.append(exc.code)
        except (urllib.error.URLError, ConnectionError):
            return False  # not serving yet
        return True

    try:
        wait_for(answered, timeout=60, what="the liveness endpoint to answer")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert status[-1] >= 500, (tmp_path / "operator.log").read_text()[-2000:]
