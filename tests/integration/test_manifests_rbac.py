"""Every overlay on the real API server: it dry-runs and applies, Pod Security admits the operator
pod (and, in the job namespace only, the privileged agent pod), the operator's
ServiceAccount can do exactly what it needs (`kubectl auth can-i` ... yes) and none of a list of
dangerous things (... no), and the admission fence binds that overlay's ServiceAccount, renamed
or not (each fence rule: test_fence.py).

The session's dev cluster is shared with other tests, so each overlay is removed again after its
checks (the CRD stays: the session's `crds_installed` owns it), and the two namespaces are
deleted, and waited for, at the end of the module.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from devcluster.waiting import wait_for
from nodesysctl.api import NodeSysctlPolicySpec
from nodesysctl.jobs import JobSettings, build_agent_job, build_restart_patch
from nodesysctl.planning import CheckOrder, CheckReason

from ..fence import FENCE_MESSAGE, operator_rest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO / "manifests" / "overlays"
# `monitoring` adds a ServiceMonitor and a PrometheusRule, kinds of the prometheus-operator's
# CRDs, which the dev cluster does not install (tests/unit/test_monitoring_manifests.py renders
# it; tests/e2e/test_metrics.py runs its rules in a real Prometheus).
OVERLAYS = sorted(
    p.name
    for p in OVERLAYS_DIR.iterdir()
    if (p / "kustomization.yaml").is_file() and p.name != "monitoring"
)
OPERATOR_NS = "nodesysctl-system"
JOB_NS = "nodesysctl-jobs"
POD_LABEL = "app.kubernetes.io/name=nodesysctl-operator"
PSA_WARNING = "would violate PodSecurity"
WORKLOADS_POLICY = "nodesysctl-operator-workloads"  # the fence's (manifests/base/fence.yaml)
AGENT_JOBS_POLICY = "nodesysctl-job-namespace-agent-jobs"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

LEASES = "leases.coordination.k8s.io"
LEASE = f"{LEASES} nodesysctl-operator"  # the leader-election Lease, by name
# (verb, resource, scope): scope is a namespace, "-A" (all namespaces) or "" (cluster-scoped);
# "resource name" asks about one object.
# Each must be ALLOWED: the calls the operator and Kopf make.
ALLOWED = [
    ("get", "nodesysctlpolicies.nodesysctl.io", ""),
    ("list", "nodesysctlpolicies.nodesysctl.io", ""),
    ("watch", "nodesysctlpolicies.nodesysctl.io", ""),
    ("patch", "nodesysctlpolicies.nodesysctl.io", ""),
    ("patch", "nodesysctlpolicies.nodesysctl.io/status", ""),
    ("get", "nodes", ""),
    ("list", "nodes", ""),
    ("watch", "nodes", ""),
    ("patch", "nodes", ""),
    ("list", "pods", "-A"),
    ("create", "pods/eviction", "shop"),
    ("list", "replicasets.apps", "-A"),
    ("get", "deployments.apps", "shop"),
    ("patch", "deployments.apps", "shop"),
    ("get", "statefulsets.apps", "shop"),
    ("patch", "statefulsets.apps", "shop"),
    ("get", "daemonsets.apps", "kube-system"),
    ("create", "events", "default"),
    ("create", "events", "shop"),
    ("create", "events", OPERATOR_NS),
    ("create", "jobs.batch", JOB_NS),
    ("delete", "jobs.batch", JOB_NS),
    ("get", "jobs.batch", JOB_NS),
    ("list", "jobs.batch", JOB_NS),
    ("watch", "jobs.batch", JOB_NS),
    ("get", "pods", JOB_NS),
    ("list", "pods", JOB_NS),
    ("watch", "pods", JOB_NS),
    ("list", "events", JOB_NS),  # the Job controller's FailedCreate
    ("get", LEASE, OPERATOR_NS),
    ("update", LEASE, OPERATOR_NS),
    ("create", LEASES, OPERATOR_NS),
]
# Each must be DENIED.
DENIED = [
    ("get", "secrets", OPERATOR_NS),
    ("list", "secrets", "-A"),
    ("watch", "secrets", "-A"),
    ("get", "configmaps", "kube-system"),
    ("create", "pods/exec", JOB_NS),
    ("create", "pods/exec", "shop"),
    ("create", "pods/attach", JOB_NS),
    ("create", "pods/portforward", JOB_NS),
    ("get", "nodes/proxy", ""),
    ("create", "pods", JOB_NS),
    ("create", "pods", "shop"),
    ("patch", "pods", JOB_NS),
    ("delete", "pods", JOB_NS),
    ("delete", "pods", "shop"),
    ("get", "pods", "shop"),
    ("patch", "daemonsets.apps", "kube-system"),
    ("list", "deployments.apps", "-A"),
    ("list", "daemonsets.apps", "-A"),
    ("watch", "pods", "-A"),
    ("create", "nodes", ""),
    ("update", "nodes", ""),
    ("delete", "nodes", ""),
    ("patch", "nodes/status", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "nodesysctlpolicies.nodesysctl.io", ""),
    ("update", "nodesysctlpolicies.nodesysctl.io", ""),
    ("delete", "nodesysctlpolicies.nodesysctl.io", ""),
    ("create", "deployments.apps", "shop"),
    ("update", "deployments.apps", "shop"),
    ("delete", "deployments.apps", "shop"),
    ("patch", "deployments.apps/scale", "shop"),
    ("delete", "daemonsets.apps", "kube-system"),
    ("create", "jobs.batch", "default"),
    ("create", "jobs.batch", OPERATOR_NS),
    ("create", "jobs.batch", "kube-system"),
    ("patch", "jobs.batch", JOB_NS),
    ("create", "cronjobs.batch", JOB_NS),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("patch", "clusterroles.rbac.authorization.k8s.io", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", JOB_NS),
    ("impersonate", "serviceaccounts", "kube-system"),
    ("impersonate", "users", ""),
    ("impersonate", "groups", ""),
    ("create", "serviceaccounts/token", OPERATOR_NS),
    ("create", "serviceaccounts", JOB_NS),
    ("create", "namespaces", ""),
    ("patch", "namespaces", ""),  # could relabel a namespace's Pod Security level
    ("delete", "namespaces", ""),
    ("update", "events", "default"),
    ("delete", "events", "default"),
    ("list", "events", "-A"),
    ("list", "events", "default"),
    ("watch", "events", JOB_NS),
    ("get", "events", JOB_NS),
    ("create", "certificatesigningrequests.certificates.k8s.io", ""),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    # Leader election: that one Lease in the operator's namespace, nothing else (no node
    # heartbeats in kube-node-lease, no other controller's Lease in kube-system).
    ("get", f"{LEASES} another", OPERATOR_NS),
    ("update", f"{LEASES} another", OPERATOR_NS),
    ("delete", LEASE, OPERATOR_NS),
    ("patch", LEASE, OPERATOR_NS),
    ("list", LEASES, OPERATOR_NS),
    ("watch", LEASES, OPERATOR_NS),
    ("create", LEASES, "kube-system"),
    ("update", f"{LEASES} kube-controller-manager", "kube-system"),
    ("update", LEASES, "kube-node-lease"),
    ("create", LEASES, JOB_NS),
]


def render(kubectl: Kubectl, overlay: str) -> list[dict[str, Any]]:
    out = kubectl("kustomize", str(OVERLAYS_DIR / overlay))
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def as_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def service_account(docs: list[dict[str, Any]]) -> str:
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    return f"system:serviceaccount:{OPERATOR_NS}:{account['metadata']['name']}"


def can_i(kubectl: Kubectl, user: str, verb: str, resource: str, scope: str) -> bool:
    args = ["auth", "can-i", verb]
    if " " in resource:
        kind, name = resource.split(" ")
        args.append(f"{kind}/{name}")
    elif "/" in resource:
        resource, subresource = resource.split("/", 1)
        args += [resource, f"--subresource={subresource}"]
    else:
        args.append(resource)
    if scope == "-A":
        args.append("--all-namespaces")
    elif scope:
        args.append(f"--namespace={scope}")
    out = kubectl(*args, f"--as={user}", check=False)
    answer = out.stdout.strip()
    assert answer in {"yes", "no"}, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return answer == "yes"


@pytest.fixture(scope="module")
def namespaces(devcluster: DevCluster, crds_installed: list[str]) -> Iterator[None]:
    """Our two namespaces (from the default overlay). Those this module created are deleted,
    and waited for, at its end; one that existed before (e.g. the e2e tests' job namespace) is
    left alone.

    A server-side dry-run creates nothing, so namespaced objects can only dry-run in
    namespaces that exist: they are applied first (what a GitOps tool's ordering does too)."""
    assert "nodesysctlpolicies.nodesysctl.io" in crds_installed
    kubectl = devcluster.kubectl
    found = [d for d in render(kubectl, "default") if d["kind"] == "Namespace"]
    names = [d["metadata"]["name"] for d in found]
    existing = kubectl("get", "namespaces", *names, "--ignore-not-found", "-o", "name").stdout
    created = [name for name in names if f"namespace/{name}" not in existing.split()]
    kubectl("apply", "-f", "-", input=as_yaml(found))
    yield
    if created:
        kubectl("delete", "namespace", *created, "--ignore-not-found", "--wait", timeout=180)


@pytest.fixture(scope="module", params=OVERLAYS)
def installed(
    request: pytest.FixtureRequest, devcluster: DevCluster, namespaces: None
) -> Iterator[tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]]]:
    """One overlay, dry-run and then really applied with `kubectl apply -k`; removed afterwards
    (all but the CRD, which the session shares, and the namespaces)."""
    overlay: str = request.param
    kubectl = devcluster.kubectl
    directory = str(OVERLAYS_DIR / overlay)
    docs = render(kubectl, overlay)
    kubectl("apply", "-k", directory, "--dry-run=server")
    kubectl("apply", "-k", directory, "--server-side", "--dry-run=server", "--field-manager=t")
    applied = kubectl("apply", "-k", directory)
    try:
        yield overlay, docs, applied
    finally:
        removable = [d for d in docs if d["kind"] not in {"CustomResourceDefinition", "Namespace"}]
        # In reverse: the fence's bindings go before the ClusterRoleBinding they read (a binding
        # whose parameter is missing denies everything it matches).
        kubectl(
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            "--wait",
            input=as_yaml(list(reversed(removable))),
            timeout=120,
        )


def test_apply_is_clean_and_idempotent(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    kubectl: Kubectl,
) -> None:
    overlay, docs, applied = installed
    assert PSA_WARNING not in applied.stderr, applied.stderr
    # Applying the same overlay again changes nothing (no field the server rewrites).
    pdbs = [d["metadata"] for d in docs if d["kind"] == "PodDisruptionBudget"]

    def pdb_generations() -> list[str]:
        return [
            kubectl("get", "pdb", "-n", m["namespace"], m["name"], "-o",
                    "jsonpath={.metadata.generation}").stdout
            for m in pdbs
        ]  # fmt: skip

    before = pdb_generations()
    again = kubectl("apply", "-k", str(OVERLAYS_DIR / overlay))
    lines = [line for line in again.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs)
    # kubectl's client-side apply reports a PodDisruptionBudget "configured" every time (its
    # selector's patch strategy is `replace`, so the patch always carries it); the server
    # changes nothing, which its unchanged generation shows.
    changed = [line for line in lines if not line.endswith(" unchanged")]
    assert all(line.startswith("poddisruptionbudget.policy/") for line in changed), again.stdout
    assert pdb_generations() == before
    # And a server-side apply by another manager (what Flux does) finds no conflict.
    kubectl("apply", "-k", str(OVERLAYS_DIR / overlay), "--server-side", "--field-manager=gitops")


def test_restricted_namespace_admits_the_operator_pod(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    devcluster: DevCluster,
) -> None:
    """The ReplicaSet controller's pod creation passes Pod Security "restricted" (enforce)."""
    [deployment] = [d for d in installed[1] if d["kind"] == "Deployment"]
    selector = ",".join(
        f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
    )

    def pod_created() -> bool:
        pods = devcluster.kubectl("get", "pods", "-n", OPERATOR_NS, "-l", selector, "-o", "json")
        return bool(json.loads(pods.stdout)["items"])

    wait_for(pod_created, timeout=60, what="the operator pod to be created")
    events = devcluster.kubectl(
        "get", "events", "-n", OPERATOR_NS, "--field-selector", "reason=FailedCreate", "-o", "json"
    )
    assert not json.loads(events.stdout)["items"]


def test_operator_is_allowed_what_it_needs(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    kubectl: Kubectl,
) -> None:
    user = service_account(installed[1])
    refused = [case for case in ALLOWED if not can_i(kubectl, user, *case)]
    assert not refused, f"{user} must be allowed: {refused}"


def test_operator_is_denied_everything_else(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    kubectl: Kubectl,
) -> None:
    assert len(DENIED) >= 10
    user = service_account(installed[1])
    granted = [case for case in DENIED if can_i(kubectl, user, *case)]
    assert not granted, f"{user} must be denied: {granted}"


def test_fence_binds_the_overlays_service_account(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    devcluster: DevCluster,
    tmp_path: Path,
) -> None:
    """The fence names the operator only through its ClusterRoleBinding, which Kustomize renames
    with the ServiceAccount: in every overlay (private-registry prefixes both) the overlay's own
    ServiceAccount is fenced. With its token, a dry-run patch of the overlay's own operator
    Deployment: a new image is refused by that overlay's workloads policy, a restart passes. And
    the agent-jobs policy reads that overlay's ServiceAccount: an agent Job in the overlay's
    image (private-registry's `images:` edit) passes, one in another image (there: the upstream
    image) is refused."""
    overlay, docs, _ = installed
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount"]
    account = sa["metadata"]["name"]
    [deployment] = [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"]

    def policy_named(base: str) -> str:
        names: list[str] = [d["metadata"]["name"] for d in docs
                            if d["kind"] == "ValidatingAdmissionPolicy"
                            and d["metadata"]["name"].endswith(base)]  # fmt: skip
        [name] = names
        return name

    policy = policy_named(WORKLOADS_POLICY)
    operator = operator_rest(devcluster, tmp_path / "sa.kubeconfig", service_account=account)
    path = f"/apis/apps/v1/namespaces/{OPERATOR_NS}/deployments/{deployment}"

    def dry_run(patch: dict[str, Any]) -> None:
        operator.request("PATCH", path, query={"dryRun": "All"}, body=patch,
                         content_type="application/merge-patch+json")  # fmt: skip

    image = {"spec": {"template": {"spec": {"containers": [
        {"name": "operator", "image": "evil.example/rootkit:latest"}]}}}}  # fmt: skip

    def refused() -> str:
        try:
            dry_run(image)
        except ApiException as exc:
            return str(exc.body) if exc.status == 403 else ""
        return ""

    # The overlay was just applied: the API server loads its policies asynchronously.
    message = wait_for(refused, timeout=60, what=f"{account}'s image patch refused")
    assert f"ValidatingAdmissionPolicy '{policy}'" in message, message
    assert FENCE_MESSAGE in message, message
    dry_run(build_restart_patch(datetime(2026, 1, 1, tzinfo=UTC), "rbac-test"))

    own_image = sa["metadata"]["annotations"]["nodesysctl.io/agent-image"]
    if overlay == "private-registry":
        assert own_image.startswith("registry.example.internal/mirror/")
    other = JobSettings().image if own_image != JobSettings().image else "evil.example/x:1"
    jobs = f"/apis/batch/v1/namespaces/{JOB_NS}/jobs"

    def job_refused() -> str:
        try:
            operator.request("POST", jobs, query={"dryRun": "All"}, body=sample_agent_job(other))
        except ApiException as exc:
            return str(exc.body) if exc.status == 403 else ""
        return ""

    message = wait_for(job_refused, timeout=60, what=f"{account}'s Job in {other} refused")
    assert f"ValidatingAdmissionPolicy '{policy_named(AGENT_JOBS_POLICY)}'" in message, message
    assert f"not {other}" in message, message
    operator.request("POST", jobs, query={"dryRun": "All"}, body=sample_agent_job(own_image))


def sample_agent_job(image: str = JobSettings().image) -> dict[str, Any]:
    spec = NodeSysctlPolicySpec.model_validate({"remediation": {"persist": True}})
    order = CheckOrder(
        node="no-such-node", reason=CheckReason.NEW, job_name="nodesysctl-rbac-probe", boot_id="b"
    )
    job = build_agent_job(
        policy="rbac-probe", policy_uid="0", spec=spec, order=order,
        settings=JobSettings(image=image),
    )  # fmt: skip
    # No owner: the policy does not exist, and the garbage collector would race this test.
    del job["metadata"]["ownerReferences"]
    return job


def test_agent_job_runs_only_in_the_job_namespace(
    installed: tuple[str, list[dict[str, Any]], subprocess.CompletedProcess[str]],
    devcluster: DevCluster,
) -> None:
    """As the operator: the privileged agent Job is created in the job namespace and its pod
    admitted there; nowhere else (RBAC), and its pod never in the restricted namespace (PSA)."""
    overlay, docs, _ = installed
    if overlay != "default":
        pytest.skip("the Job is the same for every overlay; checked once, with the default")
    kubectl = devcluster.kubectl
    user = f"--as={service_account(docs)}"
    job = sample_agent_job()
    kubectl("create", "-f", "-", user, input=json.dumps(job))
    try:

        def pod_created() -> bool:
            pods = kubectl(
                "get", "pods", "-n", JOB_NS, "-l",
                f"batch.kubernetes.io/job-name={job['metadata']['name']}", "-o", "json",
            )  # fmt: skip
            return bool(json.loads(pods.stdout)["items"])

        wait_for(pod_created, timeout=60, what="the agent Job's pod to be admitted")
    finally:
        kubectl("delete", "job", job["metadata"]["name"], "-n", JOB_NS, user, "--wait=false")

    elsewhere = {**job, "metadata": {**job["metadata"], "namespace": OPERATOR_NS}}
    refused = kubectl("create", "-f", "-", user, "--dry-run=server", check=False,
                      input=json.dumps(elsewhere))  # fmt: skip
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr.lower(), refused.stderr

    # Even an admin cannot run the agent's pod in the operator's (restricted) namespace.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent-probe", "namespace": OPERATOR_NS},
        "spec": job["spec"]["template"]["spec"],
    }
    denied = kubectl("create", "-f", "-", "--dry-run=server", check=False, input=json.dumps(pod))
    assert denied.returncode != 0
    assert "violates PodSecurity" in denied.stderr, denied.stderr
