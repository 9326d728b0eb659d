"""Refusals end to end: what the operator does when the cluster says no.

- An admission policy refusing the agent Job (a refusal no CRD rule can foresee): the policy goes
  Invalid with the API server's message and the operator sends that Job once, not once per node
  and pass; an edit retries, once. The count of POSTs is the API server's own: its metric of the
  test's ValidatingAdmissionPolicy's denials.
- The cluster refusing the agent *pod* (Pod Security `restricted`, a ResourceQuota of 0 pods):
  the Job is admitted, the Job controller cannot create its pod; the node is reported Failed with
  the reason within seconds, not at the Job's activeDeadlineSeconds.

Each test runs the operator with its own job namespace (the test's namespace), so the shared one
keeps its Pod Security level and no admission policy of these tests reaches other tests' Jobs.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from devcluster.waiting import wait_for
from nodesysctl.labels import LABEL_POLICY
from nodesysctl.planning import NodeState
from tests.kube_json import read_json

from .conftest import OperatorProcess, Policies
from .test_operator import (
    WIDENED,
    condition,
    enforce_spec,
    events_for,
    ready,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RANGE = "net.ipv4.ip_local_port_range"
Kubectl = Callable[..., Any]


def denials(kubectl: Kubectl, policy: str) -> int:
    """How many requests the API server denied by this ValidatingAdmissionPolicy (its metric)."""
    metrics = kubectl("get", "--raw", "/metrics").stdout
    pattern = re.compile(
        r"^apiserver_validating_admission_policy_check_total\{(?P<labels>[^}]*)\} (?P<n>\S+)$",
        re.MULTILINE,
    )
    return sum(
        int(float(match["n"]))
        for match in pattern.finditer(metrics)
        if f'policy="{policy}"' in match["labels"]
        and 'enforcement_action="deny"' in match["labels"]
    )


def refusing_policy(name: str, namespace: str, key: str) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy (and its binding) denying, in `namespace` only, Jobs whose
    pods tolerate taint `key`: the kind of site rule a CRD cannot know about."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["batch"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["jobs"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!object.spec.template.spec.?tolerations.orValue([])"
                        f".exists(t, t.key == '{key}')",
                        "message": f"Jobs in {namespace} may not tolerate {key}",
                        "reason": "Forbidden",
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]


@pytest.fixture
def admission_policy(
    kubectl: Kubectl, test_namespace: str, test_id: str
) -> Iterator[tuple[str, str]]:
    """(policy name, refused toleration key), in force (a dry-run Job is denied) when yielded."""
    name, key = f"{test_id}-refuse", f"nodesysctl.test/{test_id}"
    docs = yaml.safe_dump_all(refusing_policy(name, test_namespace, key))
    kubectl("apply", "-f", "-", input=docs)
    probe = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe", "namespace": test_namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"key": key, "operator": "Exists"}],
                    "containers": [{"name": "c", "image": "probe"}],
                }
            }
        },
    }

    def denied() -> bool:
        out = kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe),
                      check=False)  # fmt: skip
        return out.returncode != 0 and "denied request" in out.stderr

    wait_for(denied, timeout=30, what=f"ValidatingAdmissionPolicy {name} in force")
    yield name, key
    kubectl("delete", "-f", "-", "--ignore-not-found", input=docs)


def jobs_in(api: Any, namespace: str, policy: str) -> list[dict[str, Any]]:
    jobs = read_json(
        client.BatchV1Api(api).list_namespaced_job,
        namespace,
        label_selector=f"{LABEL_POLICY}={policy}",
    )
    return list(jobs["items"])


def test_a_job_an_admission_policy_refuses_makes_the_policy_invalid_after_one_post(
    test_namespace: str,
    admission_policy: tuple[str, str],
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    kubectl: Kubectl,
    test_id: str,
) -> None:
    vap, key = admission_policy
    nodes = [node_factory(sysctls=WIDENED, netns=False) for _ in range(3)]
    start_operator("--job-namespace", test_namespace)
    before = denials(kubectl, vap)
    name = f"{test_id}-refused"
    tolerations = [{"key": key, "operator": "Exists"}]
    spec = enforce_spec(
        node_factory.selector,
        job={"tolerations": tolerations},
        rollout={"maxConcurrent": 3, "maxFailedNodes": 1, "recheckInterval": "1h"},
    )
    policies.create(name, spec)

    def refused(body: dict[str, Any]) -> bool:
        invalid = condition(body, "Invalid")
        return (
            invalid.get("status") == "True"
            and invalid.get("observedGeneration") == (body["metadata"]["generation"])
        )

    body = wait_policy(policies, name, refused, "Invalid")
    invalid = condition(body, "Invalid")
    assert invalid["reason"] == "JobRefused"
    assert (
        f"ValidatingAdmissionPolicy '{vap}' with binding '{vap}' denied request"
        in (invalid["message"])
    )
    assert f"may not tolerate {key}" in invalid["message"]
    assert condition(body, "Ready")["status"] == "False"
    # The Event follows the status write: wait for it rather than race it, then count it.
    events = wait_for(
        functools.partial(events_for, api_client, name, "JobRefused"),
        timeout=30,
        what="the JobRefused Event",
    )
    assert len(events) == 1
    assert jobs_in(api_client, test_namespace, name) == []
    assert denials(kubectl, vap) - before == 1  # three checks planned, one Job sent

    # Node changes wake the policy: its passes send nothing for the refused generation.
    for node in nodes:
        kubectl("label", "node", node.name, f"{test_id}-poke=1")
    time.sleep(10)
    assert denials(kubectl, vap) - before == 1
    assert len(events_for(api_client, name, "JobRefused")) == 1

    # An edit retries, once; dropping the toleration the site refuses fixes the policy.
    policies.patch_spec(name, {"rollout": {"maxConcurrent": 2}})
    wait_policy(
        policies,
        name,
        lambda b: refused(b) and b["metadata"]["generation"] == 2,
        "Invalid for generation 2",
    )
    assert denials(kubectl, vap) - before == 2
    policies.patch_spec(name, {"job": {"tolerations": []}})
    body = wait_policy(policies, name, ready, "Ready once nothing is refused")
    assert condition(body, "Invalid")["status"] == "False"
    assert [node.get_sysctl(RANGE).split() for node in nodes] == [["32768", "60999"]] * 3
    assert denials(kubectl, vap) - before == 2


@pytest.mark.parametrize(
    ("refuse", "expected"),
    [
        ("pod-security", 'violates PodSecurity "restricted:latest"'),
        ("zero-quota", "exceeded quota"),
    ],
)
def test_a_pod_the_cluster_refuses_fails_the_node_long_before_the_jobs_deadline(
    refuse: str,
    expected: str,
    test_namespace: str,
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    kubectl: Kubectl,
    test_id: str,
) -> None:
    if refuse == "pod-security":
        kubectl(
            "label", "namespace", test_namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
    else:
        kubectl("create", "quota", "no-pods", "--hard=pods=0", "-n", test_namespace)
    node = node_factory(sysctls=WIDENED, netns=False)
    start_operator("--job-namespace", test_namespace)
    name = f"{test_id}-podless"
    deadline = 600
    policies.create(
        name, enforce_spec(node_factory.selector, job={"activeDeadlineSeconds": deadline})
    )
    started = time.monotonic()
    result = wait_node_state(api_client, node.name, name, NodeState.FAILED, timeout=90)
    took = time.monotonic() - started
    assert took < 60, f"reported after {took:.0f} s"  # the Job's deadline: 600 s
    assert result.message.startswith("pod creation refused: ")
    assert expected in result.message
    # The Events follow the node result (node first, then the policy): wait, don't race them.
    for involved in (node.name, name):
        wait_for(
            functools.partial(events_for, api_client, involved, "PodCreationRefused"),
            timeout=30,
            what=f"a PodCreationRefused Event about {involved}",
        )
    # The Job is deleted (no retries until its deadline) and no other is made for the node.
    wait_for(lambda: not jobs_in(api_client, test_namespace, name), timeout=30, what="Job deleted")
    body = wait_policy(
        policies, name, lambda b: condition(b, "Degraded").get("status") == "True", "halted"
    )
    assert condition(body, "Degraded")["reason"] == "FailureBudgetExhausted"
    assert body["status"]["worstNodes"][0]["message"].startswith("pod creation refused: ")
    assert node.get_sysctl(RANGE).split() == ["1024", "65000"]  # nothing ran on the node
