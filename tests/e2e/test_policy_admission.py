"""The operator decides what runs privileged, end to end: a policy that names an image or a
PriorityClass the operator does not allow is reported Invalid (condition and Event) and no Job
is ever sent to the API server; an edit that drops the choice runs at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster.cluster import DevCluster
from devcluster.waiting import wait_for
from nodesysctl.jobs import DEFAULT_AGENT_IMAGE
from nodesysctl.planning import NodeState

from .conftest import OperatorProcess, Policies
from .test_operator import (
    condition,
    enforce_spec,
    events_for,
    policy_jobs,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# A failed pass is retried after 5 s (nodesysctl.daemon): watching three times that long shows
# the refusal is not retried.
QUIET_SECONDS = 15


def job_posts(devcluster: DevCluster) -> float:
    """Job creations the API server has answered so far, whoever asked (its own counter)."""
    metrics = devcluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("apiserver_request_total{")
        and 'resource="jobs"' in line
        and 'verb="POST"' in line
    )


def invalid(body: dict[str, Any]) -> bool:
    return condition(body, "Invalid").get("status") == "True"


def test_an_image_or_priority_class_the_operator_does_not_allow_creates_no_job(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    devcluster: DevCluster,
    test_id: str,
) -> None:
    [node] = node_factory.many(1)
    before = job_posts(devcluster)
    refused = {
        f"{test_id}-image": ({"image": "evil.example/rootkit:latest"}, "spec.job.image"),
        f"{test_id}-priority": (
            {"priorityClassName": "system-node-critical"},
            "spec.job.priorityClassName",
        ),
    }
    for name, (job, _) in refused.items():
        policies.create(name, enforce_spec(node_factory.selector, job=job))
    for name, (_, path) in refused.items():
        body = wait_policy(policies, name, invalid, "Invalid")
        message = condition(body, "Invalid")["message"]
        assert f"{path}: " in message
        assert "is not in the operator's --allowed-" in message
        assert condition(body, "Ready").get("status") != "True"
    time.sleep(QUIET_SECONDS)
    for name in refused:
        assert len(events_for(api_client, name, "InvalidSpec")) == 1, "reported once"
        assert policy_jobs(api_client, name) == []
    assert job_posts(devcluster) == before, "no Job was sent to the API server"

    # Dropping the image runs the policy with the operator's own image, at once.
    name = f"{test_id}-image"
    policies.patch_spec(name, {"job": {"image": ""}})
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    [created] = policy_jobs(api_client, name)
    assert created["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULT_AGENT_IMAGE
    wait_for(lambda: job_posts(devcluster) > before, timeout=10, what="the Job POST counted")
    assert not invalid(policies.get(name))
