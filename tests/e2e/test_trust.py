"""What the operator believes, end to end: a forged agent result on the real dev cluster.

Anyone who can create pods in the job namespace can label one with a Job's job-name label and
have it report "Compliant". Before the operator checked owners, that pod's message was taken
for the Job's result whenever the Job's own pod left none (here: a one-pod ResourceQuota that
another pod holds keeps the Job controller from creating it, and the Job runs into its
deadline. A taint would not do: a node whose taint the policy does not tolerate waits and gets
no Job. Nor would a quota the pod alone exceeds: that fails the node at once, as a refusal).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.install import JOB_NAMESPACE
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import parse_spec
from nodesysctl.labels import AGENT_APP, LABEL_APP, LABEL_JOB_NAME, LABEL_POLICY
from nodesysctl.planning import NodeState, job_name, spec_hash
from tests.kube_json import read_json

from .conftest import OperatorProcess, Policies
from .test_operator import enforce_spec, events_for, node_result, wait_node_state

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NO_PODS_QUOTA = "nodesysctl-e2e-no-pods"
QUOTA_HOLDER = "nodesysctl-e2e-quota-holder"


def forged_agent_pod(name: str, job: str, policy: str, node: str) -> dict[str, Any]:
    """A bare pod that claims to be `job`'s agent pod and reports Compliant. `spec.nodeName`
    bypasses the scheduler; the simulated kubelet runs it as it runs any pod labelled as an
    agent."""
    compliant = AgentResult.model_validate(
        {"policy": policy, "node": node, "status": "Compliant", "checkedAt": datetime.now(UTC)}
    ).model_dump_json()
    write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {LABEL_APP: AGENT_APP, LABEL_JOB_NAME: job, LABEL_POLICY: policy},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "agent",
                    "image": "forged.example/agent:1",
                    "command": ["python", "-c", write, "/dev/termination-log", compliant],
                }
            ],
        },
    }


@pytest.fixture
def job_namespace_pods(api_client: Any) -> Iterator[list[str]]:
    """Names of pods a test creates in the job namespace; deleted afterwards."""
    names: list[str] = []
    yield names
    core: Any = client.CoreV1Api(api_client)
    for name in names:
        try:
            core.delete_namespaced_pod(name, JOB_NAMESPACE, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def no_new_pods(api_client: Any, node_factory: Any) -> Iterator[None]:
    """A one-pod ResourceQuota in the job namespace, held by a pod that keeps running, while
    the test runs: the Job controller's pod creation is refused (FailedCreate) for as long as
    another pod holds the quota, which the operator leaves to the Job's deadline."""
    core: Any = client.CoreV1Api(api_client)
    holder_node: SimulatedNode = node_factory(netns=False)
    holder = {
        "metadata": {"name": QUOTA_HOLDER},
        "spec": {
            "nodeName": holder_node.name,
            "containers": [{"name": "hold", "image": "registry.k8s.io/pause:3.10"}],
        },
    }
    core.create_namespaced_pod(JOB_NAMESPACE, holder)
    wait_for(
        lambda: (
            read_json(core.read_namespaced_pod, QUOTA_HOLDER, JOB_NAMESPACE)
            .get("status", {})
            .get("phase")
            == "Running"
        ),
        timeout=30,
        what="the quota's holder pod to run",
    )
    quota = {"metadata": {"name": NO_PODS_QUOTA}, "spec": {"hard": {"pods": "1"}}}
    core.create_namespaced_resource_quota(JOB_NAMESPACE, quota)
    try:
        yield
    finally:
        core.delete_namespaced_resource_quota(NO_PODS_QUOTA, JOB_NAMESPACE)
        core.delete_namespaced_pod(QUOTA_HOLDER, JOB_NAMESPACE, grace_period_seconds=0)


def test_a_forged_compliant_result_is_not_recorded_and_names_the_pod(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    job_namespace_pods: list[str],
    test_id: str,
    request: pytest.FixtureRequest,
) -> None:
    node: SimulatedNode = node_factory(netns=False)
    name = f"{test_id}-forged"
    spec = enforce_spec(node_factory.selector, job={"activeDeadlineSeconds": 10})
    # The name the operator gives the node's first check (planning.plan_rollout's check key).
    job = job_name(name, node.name, f"{spec_hash(parse_spec(spec))}|{node.boot_id}|first")

    core: Any = client.CoreV1Api(api_client)
    forged = f"{job}-forged"
    core.create_namespaced_pod(JOB_NAMESPACE, forged_agent_pod(forged, job, name, node.name))
    job_namespace_pods.append(forged)

    def reported_compliant() -> bool:
        pod = read_json(core.read_namespaced_pod, forged, JOB_NAMESPACE)
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        terminated = (statuses[0].get("state") or {}).get("terminated") or {}
        return '"Compliant"' in str(terminated.get("message", ""))

    wait_for(reported_compliant, timeout=30, what="the forged pod to report Compliant")

    # The Job's own pod can never be created now, so the Job only fails by deadline.
    request.getfixturevalue("no_new_pods")
    policies.create(name, spec)
    result = wait_node_state(api_client, node.name, name, NodeState.FAILED, timeout=60)
    assert result.job == job
    assert f"came from pod {forged}, which is not owned by Job {job}" in result.message
    assert "DeadlineExceeded" in result.message  # the Job's own reason, too
    assert node_result(api_client, node.name, name) == result  # written once, never Compliant
    events = events_for(api_client, node.name, "UntrustedResult")
    assert events, "no UntrustedResult Event on the node"
    assert forged in events[0]["message"]
    assert events_for(api_client, name, "UntrustedResult")  # and on the policy
