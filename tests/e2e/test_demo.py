"""`make demo` works: run it the way CI can (non-interactive) and check what it tells the user."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devcluster.nodes import NETNS_PREFIX

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def dev_cluster_netns() -> set[str]:
    """The dev cluster's network namespaces (`nsc-...`): other programs on the machine may add
    and remove their own meanwhile."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    return {name for name in names if name.startswith(NETNS_PREFIX)}


def test_demo_converges_restarts_only_the_host_network_deployment_and_cleans_up(
    devcluster: object,  # proves the binaries and root are there (else skip/fail as usual)
) -> None:
    before = dev_cluster_netns()
    demo = subprocess.run(
        [sys.executable, "-m", "devcluster.demo", "--non-interactive"],
        cwd=REPO,  # devcluster is not installed: `-m` finds it from the repo root, as `make demo`
        capture_output=True, text=True, timeout=360, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = demo.stdout
    assert demo.returncode == 0, out[-6000:] + demo.stderr[-3000:]
    assert "Demo succeeded." in out
    assert "edge-proxy    RESTARTED (2 ReplicaSets) - host network, selected" in out
    # The pod-network Deployment on the same remediated node is left alone, and it says why.
    assert (
        "checkout      untouched (1 ReplicaSets) - same node, pod network: its own network "
        "namespace never had the node's range" in out
    )
    assert "batch-report  untouched (1 ReplicaSets)" in out
    assert "catalog       untouched (1 ReplicaSets)" in out
    assert "a pod with its own network namespace never had the node's ip_local_port_range" in out
    assert "$ nodesysctl status --restarts" in out
    assert "workers-nodeport-safe   Enforce   4       4           0         0        True" in out
    for node in ("worker-1", "worker-2", "worker-3"):
        assert f"{node}  now 32768-60999  reserved=10250,30000-32767  -> Remediated" in out
    assert "worker-4  now 32768-60999  reserved=10250,30000-32767  -> Compliant" in out
    assert "Cleaned up" in out
    assert dev_cluster_netns() == before, "the demo left network namespaces behind"
