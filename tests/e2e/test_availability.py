"""Nodes that cannot run a check wait instead of failing (issue 12): a cordoned node, a NotReady
node and a node with a taint the policy does not tolerate get no Job, show why, do not halt a
rollout with `maxFailedNodes: 1`, and are fixed once they are available again."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.nodes import SimulatedNode
from nodesysctl.labels import ANNOTATION_NODE
from nodesysctl.planning import NodeState

from .conftest import OperatorProcess, Policies
from .test_operator import (
    KERNEL_DEFAULT_RANGE,
    RANGE,
    WIDENED,
    condition,
    enforce_spec,
    node_result,
    policy_jobs,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


def worst(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    entries = (body.get("status") or {}).get("worstNodes") or []
    return {w["name"]: (w["state"], w.get("message", "")) for w in entries}


def jobs_on(api: Any, policy: str) -> set[str]:
    return {j["metadata"]["annotations"][ANNOTATION_NODE] for j in policy_jobs(api, policy)}


def test_unavailable_nodes_wait_with_their_reason_and_are_fixed_once_available(
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    kubectl: Callable[..., Any],
    kubeconfig_path: Path,
    test_id: str,
) -> None:
    healthy: SimulatedNode = node_factory(sysctls=WIDENED)
    cordoned: SimulatedNode = node_factory(sysctls=WIDENED)
    dead: SimulatedNode = node_factory(sysctls=WIDENED)
    tainted: SimulatedNode = node_factory(sysctls=WIDENED, taints=[TAINT])
    kubectl("cordon", cordoned.name)
    dead.set_ready(False)  # the kubelet says NotReady; its Lease is still renewed
    start_operator()
    name = f"{test_id}-avail"
    policies.create(
        name,
        enforce_spec(
            node_factory.selector,
            rollout={"maxConcurrent": 4, "maxFailedNodes": 1, "recheckInterval": "1h"},
        ),
    )

    body = wait_policy(
        policies,
        name,
        lambda b: (
            (b.get("status") or {}).get("waiting") == 3
            and (b.get("status") or {}).get("compliant") == 1
        ),
        "3 nodes waiting, the healthy one fixed",
    )
    waiting = worst(body)
    assert waiting[cordoned.name][0] == NodeState.WAITING
    assert waiting[cordoned.name][1].startswith("Cordoned: ")
    assert waiting[dead.name][1] == "NotReady: the node's Ready condition is False"
    assert waiting[tainted.name][1].startswith("TaintNotTolerated: dedicated ")
    status = body["status"]
    assert (status["failed"], status["pending"]) == (0, 0)
    assert condition(body, "Degraded")["status"] == "False"  # maxFailedNodes 1 is not spent
    assert condition(body, "Ready")["reason"] == "NodesWaiting"
    assert healthy.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    # No Job for them, nothing written onto them, their kernels untouched.
    assert jobs_on(api_client, name) == {healthy.name}
    for node in (cordoned, dead, tainted):
        assert node_result(api_client, node.name, name) is None
        assert node.get_sysctl(RANGE) == "1024\t65000"

    # The same in `nodesysctl status` and `kubectl get nsp`.
    report = subprocess.run(
        [sys.executable, "-m", "nodesysctl.cli", "status", "--policy", name],
        env={**os.environ, "KUBECONFIG": str(kubeconfig_path), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in report.splitlines()[1:]}
    assert rows[dead.name][2:4] == ["Waiting", "never"]
    assert rows[dead.name][4] == "NotReady:"
    assert rows[tainted.name][4:6] == ["TaintNotTolerated:", "dedicated"]
    header, row = kubectl("get", "nsp", name).stdout.splitlines()[:2]
    assert header.split()[6:8] == ["READY", "WAITING"]
    assert row.split()[6:8] == ["False", "3"]

    # Available again: checked and fixed at once, without touching the policy.
    kubectl("uncordon", cordoned.name)
    dead.set_ready(True)
    for node in (cordoned, dead):
        wait_node_state(api_client, node.name, name, NodeState.REMEDIATED, timeout=60)
        assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    body = wait_policy(
        policies,
        name,
        lambda b: (
            (b.get("status") or {}).get("waiting") == 1
            and (b.get("status") or {}).get("compliant") == 3
        ),
        "only the tainted node still waiting",
    )
    assert body["metadata"]["generation"] == 1
    assert list(worst(body)) == [tainted.name]
    assert tainted.get_sysctl(RANGE) == "1024\t65000"
