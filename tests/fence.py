"""Install the admission fence (manifests/base/fence.yaml) in the dev cluster and wait until the
API server enforces it: admission policies are loaded asynchronously (informers), so the first
requests after an apply may pass unfenced.

The probe is the operator-workloads policy, applied last (policy, then binding): once the API
server refuses the operator's image patch on a probe Deployment with that policy's own message
(so its parameter, the operator's ClusterRoleBinding, is loaded too), its informers hold every
policy and binding applied before it. The agent-jobs policy has a parameter of its own (the
operator's ServiceAccount): it is probed too, with a dry-run agent Job in a foreign image.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import config
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from devcluster.install import (
    FENCE_KINDS,
    JOB_NAMESPACE,
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    apply_documents,
    service_account_kubeconfig,
)
from devcluster.waiting import wait_for
from nodesysctl.api import NodeSysctlPolicySpec
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.kube import Rest
from nodesysctl.planning import CheckOrder, CheckReason, HostDirs

FENCE_MESSAGE = "nodesysctl fence:"
PROBE_POLICY = "nodesysctl-operator-workloads"
AGENT_JOBS_POLICY = "nodesysctl-job-namespace-agent-jobs"
PROBE = "nodesysctl-fence-probe"
JOBS = f"/apis/batch/v1/namespaces/{JOB_NAMESPACE}/jobs"


AUDIT_ONLY = {"remediation": {"mode": "Audit", "persist": False}}


def agent_job(
    name: str,
    node: str,
    *,
    spec: Mapping[str, Any] = AUDIT_ONLY,
    settings: JobSettings | None = None,
    policy: str = "fence-test",
    dirs: HostDirs | None = None,
) -> dict[str, Any]:
    """The Job the operator sends to check `node` for a policy with `spec` (`build_agent_job`,
    what the fence admits; `dirs`: the host directories the check opens), without its owner
    reference: there is no policy object, and the garbage collector would delete a Job whose
    owner does not exist."""
    policy_spec = NodeSysctlPolicySpec.model_validate(spec)
    order = CheckOrder(node=node, reason=CheckReason.NEW, job_name=name, boot_id="fence-test")
    job = build_agent_job(policy=policy, policy_uid="0", spec=policy_spec, order=order,
                          settings=settings or JobSettings(), dirs=dirs)  # fmt: skip
    del job["metadata"]["ownerReferences"]
    return job


def operator_rest(cluster: DevCluster, path: Path, service_account: str = SERVICE_ACCOUNT) -> Rest:
    """REST calls with a fresh token of the operator's ServiceAccount and nothing else."""
    kubeconfig = service_account_kubeconfig(cluster, path, service_account=service_account)
    api: Any = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return Rest(api)


def probe_last(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`docs` with the probe policy and then its binding moved to the end."""

    def is_probe(doc: dict[str, Any]) -> int:
        if doc["kind"] not in FENCE_KINDS or doc["metadata"]["name"] != PROBE_POLICY:
            return 0
        return 1 if doc["kind"] == "ValidatingAdmissionPolicy" else 2

    ordered = sorted(docs, key=is_probe)
    assert [is_probe(d) for d in ordered[-2:]] == [1, 2], "the fence lost its probe policy"
    return ordered


def apply_fenced(cluster: DevCluster, docs: list[dict[str, Any]], directory: Path) -> Path:
    """Apply the operator's RBAC and fence documents; return once the fence is enforced."""
    manifest = apply_documents(cluster, probe_last(docs), directory / "rbac-and-fence.yaml")
    wait_until_enforced(cluster, directory / "probe.kubeconfig")
    return manifest


def wait_until_enforced(cluster: DevCluster, kubeconfig: Path, timeout: float = 60) -> None:
    admin = Rest(cluster.api)
    operator = operator_rest(cluster, kubeconfig)
    deployments = f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments"
    try:
        admin.create(deployments, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": PROBE},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": PROBE}}, "template": {
                "metadata": {"labels": {"app": PROBE}},
                "spec": {"containers": [{"name": "probe", "image": "registry.example/probe:1"}]},
            }},
        })  # fmt: skip
    except ApiException as exc:
        if exc.status != 409:
            raise
    image = {"spec": {"template": {"spec": {"containers": [
        {"name": "probe", "image": "registry.example/probe:2"}]}}}}  # fmt: skip

    def refused() -> bool:
        try:
            operator.request("PATCH", f"{deployments}/{PROBE}", query={"dryRun": "All"},
                             body=image, content_type="application/merge-patch+json")  # fmt: skip
        except ApiException as exc:
            body = str(exc.body)
            return exc.status == 403 and PROBE_POLICY in body and FENCE_MESSAGE in body
        return False

    foreign = agent_job(
        PROBE, "no-such-node", settings=JobSettings(image="registry.example/probe:1")
    )

    def foreign_image_refused() -> bool:
        try:
            operator.request("POST", JOBS, query={"dryRun": "All"}, body=foreign)
        except ApiException as exc:
            body = str(exc.body)
            return exc.status == 403 and AGENT_JOBS_POLICY in body and FENCE_MESSAGE in body
        return False

    try:
        wait_for(refused, timeout=timeout, what="the API server to enforce the fence")
        wait_for(foreign_image_refused, timeout=timeout,
                 what="the agent-jobs policy to read the operator's ServiceAccount")  # fmt: skip
    finally:
        admin.delete(f"{deployments}/{PROBE}")
