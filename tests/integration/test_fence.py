"""The admission fence (manifests/base/fence.yaml) on the real API server, rule by rule.

The default overlay's namespaces, RBAC and fence are applied as the dev cluster installs them
(`install.operator_rbac_documents`). The operator is its ServiceAccount's token only (no
impersonation); the job-namespace user is `--as` a user bound to `edit` there, which RBAC lets
do all of it, so every refusal below is the fence's. Each denial is asserted on the policy's
name and message, each allowance by the change being there afterwards. The Jobs created here
are the operator's own shape (`build_agent_job`), which the agent-jobs rule demands, unless a
test is about another shape.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from devcluster.install import (
    FENCE_KINDS,
    JOB_NAMESPACE,
    REPO,
    apply_documents,
    operator_rbac_documents,
)
from devcluster.waiting import wait_for
from nodesysctl import GROUP, PLURAL, VERSION
from nodesysctl.jobs import JobSettings, build_node_result_patch, build_restart_patch
from nodesysctl.kube import JSON_PATCH, KubeError, Rest
from nodesysctl.labels import (
    LABEL_APP,
    LABEL_POLICY,
    READINESS_TAINT_PREFIX,
    RESTART_WAVE,
    RESTARTED_AT,
)
from nodesysctl.node_taints import is_conflict
from nodesysctl.planning import HostDirs
from nodesysctl.readiness import build_taints_patch

from ..fence import FENCE_MESSAGE as FENCE
from ..fence import agent_job, apply_fenced, operator_rest

pytestmark = pytest.mark.integration

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
WORKLOADS = "nodesysctl-operator-workloads"
NODES = "nodesysctl-operator-nodes"
NODE_RESULTS = "nodesysctl-node-results"
POLICIES = "nodesysctl-operator-policies"
CREATE = "nodesysctl-job-namespace-create"
AGENT_JOBS = "nodesysctl-job-namespace-agent-jobs"
INTEGRITY = "nodesysctl-job-namespace-integrity"
NO_SHELL = "nodesysctl-job-namespace-no-shell"


def rendered(kubectl: Kubectl) -> list[dict[str, Any]]:
    out = kubectl("kustomize", str(REPO / "manifests" / "overlays" / "default")).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def fence(
    devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[dict[str, Any]]]:
    """The default overlay's two namespaces, then its RBAC and fence, enforced. Whatever this
    module created is removed at its end, the fence first (a binding without its parameter
    denies), the namespaces waited for; what existed before (the e2e session's) is left."""
    kubectl = devcluster.kubectl
    namespaces = [d for d in rendered(kubectl) if d["kind"] == "Namespace"]
    docs = operator_rbac_documents(devcluster)
    assert {d["kind"] for d in docs} >= FENCE_KINDS
    everything = namespaces + [d for d in docs if d["kind"] != "Namespace"]
    listed = tmp_path_factory.mktemp("fence") / "all.yaml"
    listed.write_text(yaml.safe_dump_all(everything))
    # `kind.group/name` -> `kind/name`, lower case, as `kubectl get -o name` prints them.
    found = kubectl("get", "-f", str(listed), "--ignore-not-found", "-o", "name").stdout.split()
    before = {f"{line.split('/')[0].split('.')[0]}/{line.split('/')[1]}" for line in found}
    # A namespace that exists is left as it is (the e2e harness labels its job namespace).
    missing = [d for d in namespaces if f"namespace/{d['metadata']['name']}" not in before]
    if missing:
        apply_documents(devcluster, missing, listed.with_name("namespaces.yaml"))
    apply_fenced(devcluster, docs, listed.parent)
    yield docs
    created = [d for d in everything
               if f"{d['kind'].lower()}/{d['metadata']['name']}" not in before]  # fmt: skip
    if created:
        leftover = listed.with_name("created.yaml")
        leftover.write_text(yaml.safe_dump_all(list(reversed(created))))
        kubectl("delete", "-f", str(leftover), "--ignore-not-found", "--wait", timeout=180)


@pytest.fixture(scope="module")
def operator(
    devcluster: DevCluster, fence: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Rest:
    """REST calls authenticated with a token of the operator's ServiceAccount, nothing else."""
    return operator_rest(devcluster, tmp_path_factory.mktemp("sa") / "kubeconfig")


def refusal(call: Callable[..., Any], *args: Any) -> str:
    """The body of the 403 that `call(*args)` must end in."""
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status == 403, caught.value.body
    return str(caught.value.body)


def fenced(policy: str, call: Callable[..., Any], *args: Any) -> str:
    """`call(*args)` is refused by `policy` (not by RBAC): its message."""
    body = refusal(call, *args)
    assert f"ValidatingAdmissionPolicy '{policy}'" in body, body
    assert FENCE in body, body
    return body


def kubectl_fenced(kubectl: Kubectl, policy: str, *args: str, **kwargs: Any) -> str:
    out = kubectl(*args, check=False, **kwargs)
    assert out.returncode != 0, f"kubectl {' '.join(args)} was allowed: {out.stdout}"
    assert f"ValidatingAdmissionPolicy '{policy}'" in out.stderr, out.stderr
    assert FENCE in out.stderr, out.stderr
    return str(out.stderr)


# --- workloads ------------------------------------------------------------------------------

WORKLOAD_PATHS = {"Deployment": "deployments", "StatefulSet": "statefulsets",
                  "DaemonSet": "daemonsets"}  # fmt: skip


def workload(kind: str, name: str, test_id: str) -> dict[str, Any]:
    template = {
        "metadata": {"labels": {"app": name}, "annotations": {"team": "shop"}},
        "spec": {
            # No node has this label: the workload exists, nothing runs.
            "nodeSelector": {"nodesysctl.io/test-id": f"{test_id}-nowhere"},
            "containers": [{"name": "web", "image": "registry.example/web:1"}],
        },
    }
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if kind != "DaemonSet":
        spec["replicas"] = 1
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_operator_may_not_patch_a_daemonset_at_all(
    operator: Rest, api_client: Any, test_namespace: str, test_id: str
) -> None:
    """RBAC, before the fence: a DaemonSet is never rolled out (that restarts it on every node);
    its pod on a remediated node is evicted instead (issue 13)."""
    path = f"/apis/apps/v1/namespaces/{test_namespace}/daemonsets"
    Rest(api_client).create(path, workload("DaemonSet", "agent", test_id))
    stamp = build_restart_patch(datetime(2026, 1, 1, tzinfo=UTC), "w1")
    body = refusal(operator.merge_patch, f"{path}/agent", stamp)
    assert "ValidatingAdmissionPolicy" not in body, body
    assert 'cannot patch resource "daemonsets"' in json.loads(body)["message"], body


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_operator_may_only_stamp_the_restart_annotations_on_a_workload(
    kind: str, operator: Rest, api_client: Any, test_namespace: str, test_id: str
) -> None:
    admin = Rest(api_client)
    path = f"/apis/apps/v1/namespaces/{test_namespace}/{WORKLOAD_PATHS[kind]}"
    admin.create(path, workload(kind, "web", test_id))
    web = f"{path}/web"

    # The operator's own restart patch (what `kubectl rollout restart` does, plus the wave).
    operator.merge_patch(web, build_restart_patch(datetime(2026, 1, 1, tzinfo=UTC), "w1"))
    annotations = admin.get(web)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"team": "shop", RESTARTED_AT: "2026-01-01T00:00:00Z",
                           RESTART_WAVE: "w1"}  # fmt: skip

    image = {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "evil.example/rootkit:latest"}]}}}}  # fmt: skip
    assert "changes the pod spec" in fenced(WORKLOADS, operator.merge_patch, web, image)
    cases: list[Mapping[str, Any]] = [
        {"spec": {"template": {"spec": {"serviceAccountName": "default"}}}},
        {"spec": {"template": {"metadata": {"labels": {"app": "web", "x": "y"}}}}},
        {"spec": {"template": {"metadata": {"annotations": {"team": "evil"}}}}},
        {"spec": {"minReadySeconds": 5}},
        {"metadata": {"labels": {"x": "y"}}},
        {"metadata": {"annotations": {"x": "y"}}},
    ]
    if kind != "DaemonSet":
        cases.append({"spec": {"replicas": 3}})
    for patch in cases:
        fenced(WORKLOADS, operator.merge_patch, web, patch)
    assert admin.get(web)["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.example/web:1"
    )
    # Removing its own stamp is allowed too; an admin is not fenced at all.
    operator.merge_patch(web, {"spec": {"template": {"metadata": {"annotations": {
        RESTART_WAVE: None}}}}})  # fmt: skip
    admin.merge_patch(web, image)


# --- Nodes ----------------------------------------------------------------------------------


def test_operator_may_only_change_its_annotations_on_a_node(
    operator: Rest, api_client: Any, node_factory: Any, test_id: str
) -> None:
    node = node_factory(netns=False)
    path = f"/api/v1/nodes/{node.name}"
    result = f"{GROUP}/result.{test_id}"
    operator.merge_patch(path, {"metadata": {"annotations": {result: '{"state": "Compliant"}'}}})
    assert Rest(api_client).get(path)["metadata"]["annotations"][result]
    operator.merge_patch(path, build_node_result_patch(test_id, None))  # what cleanup sends
    assert result not in Rest(api_client).get(path)["metadata"].get("annotations", {})

    taint = {"key": "evil", "effect": "NoExecute"}
    assert "changes another taint" in fenced(NODES, operator.merge_patch, path,
                                             {"spec": {"taints": [taint]}})  # fmt: skip
    for patch in (
        {"spec": {"unschedulable": True}},
        {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}},
        {"metadata": {"labels": {"nodesysctl.io/test-id": None}}},
        {"metadata": {"annotations": {"example.com/owner": "evil"}}},
    ):
        fenced(NODES, operator.merge_patch, path, patch)
    body = Rest(api_client).get(path)
    assert "taints" not in body["spec"]
    assert body["metadata"]["labels"]["nodesysctl.io/test-id"] == test_id


def test_operator_may_change_only_the_readiness_taints_on_a_node_and_add_only_noschedule(
    operator: Rest, api_client: Any, node_factory: Any
) -> None:
    """What `nodesysctl.node_taints` sends: a JSON patch testing the resourceVersion, then the
    whole list; the fence checks the list against the old one."""
    ours = {"key": READINESS_TAINT_PREFIX, "effect": "NoSchedule"}
    gpu = {"key": f"{READINESS_TAINT_PREFIX}-gpu", "effect": "NoExecute"}
    theirs = {"key": "example.com/dedicated", "value": "db", "effect": "NoSchedule"}
    node = node_factory(netns=False, taints=[theirs, ours, gpu])
    path = f"/api/v1/nodes/{node.name}"
    admin = Rest(api_client)

    def send(taints: list[dict[str, Any]], version: str | None = None) -> Any:
        current = version or admin.get(path)["metadata"]["resourceVersion"]
        return operator.request("PATCH", path, body=build_taints_patch(current, taints),
                                content_type=JSON_PATCH)  # fmt: skip

    def now() -> list[dict[str, Any]]:
        return [{k: v for k, v in t.items() if k != "timeAdded"}
                for t in admin.get(path)["spec"].get("taints", [])]  # fmt: skip

    # Removing ours (any effect) and putting one back as NoSchedule are allowed.
    send([theirs, gpu])
    assert now() == [theirs, gpu]
    send([theirs])
    send([theirs, ours])
    assert now() == [theirs, ours]
    # Anything else is not: another taint removed, changed or added; ours added as NoExecute.
    for taints in (
        [ours],
        [{**theirs, "value": "web"}, ours],
        [theirs, ours, {"key": "evil", "effect": "NoSchedule"}],
    ):
        assert "changes another taint" in fenced(NODES, send, taints)
    assert "only with effect NoSchedule" in fenced(NODES, send, [theirs, ours, gpu])
    assert now() == [theirs, ours]

    # A stale resourceVersion is a conflict the operator reads again on, never a write.
    stale = admin.get(path)["metadata"]["resourceVersion"]
    admin.merge_patch(path, {"metadata": {"labels": {"example.com/rack": "r1"}}})
    with pytest.raises(KubeError) as caught:
        send([theirs], stale)
    assert is_conflict(caught.value), caught.value.body
    assert now() == [theirs, ours]


def test_nobody_else_writes_the_operators_annotations_on_a_node(
    kubectl: Kubectl, operator: Rest, node_factory: Any, test_id: str, tmp_path: Path
) -> None:
    """What the operator believes on a Node (results, boot ids) only it writes: not the node's
    own kubelet (the Node authorizer lets it patch and create its own Node), not a controller;
    other annotations stay theirs."""
    node = node_factory(netns=False)
    result = f"{GROUP}/result.{test_id}"
    operator.merge_patch(f"/api/v1/nodes/{node.name}", {"metadata": {"annotations": {
        result: '{"state": "Failed"}'}}})  # fmt: skip
    kubelet = [f"--as=system:node:{node.name}", "--as-group=system:nodes"]
    for change in (f"{result}=" + '{"state":"Compliant"}', f"{result}-",
                   f"{GROUP}/boot-id.{test_id}=forged"):  # fmt: skip
        message = kubectl_fenced(kubectl, NODE_RESULTS, "annotate", f"node/{node.name}",
                                 change, "--overwrite", *kubelet)  # fmt: skip
        assert "only the nodesysctl operator writes" in message
    kubectl("annotate", f"node/{node.name}", "example.com/rack=r1", *kubelet)
    kubectl("annotate", f"node/{node.name}", "example.com/rack=r2", "--overwrite",
            "--as=system:serviceaccount:kube-system:node-controller")  # fmt: skip
    # A node re-registering cannot bring a result with it either.
    other = f"{test_id}-reborn"
    manifest = tmp_path / "node.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": other, "annotations": {result: '{"state": "Compliant"}'}}}))  # fmt: skip
    kubectl_fenced(kubectl, NODE_RESULTS, "create", "-f", str(manifest), "--dry-run=server",
                   f"--as=system:node:{other}", "--as-group=system:nodes")  # fmt: skip


# --- policies -------------------------------------------------------------------------------


def test_operator_may_change_a_policys_status_finalizer_and_annotations_not_its_spec(
    operator: Rest, api_client: Any, crds_installed: list[str], test_id: str
) -> None:
    admin = Rest(api_client)
    collection = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    admin.create(collection, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeSysctlPolicy",
        "metadata": {"name": test_id, "labels": {"team": "shop"}},
        "spec": {"nodeSelector": {"matchLabels": {"nodesysctl.io/test-id": test_id}},
                 "remediation": {"mode": "Audit"}},
    })  # fmt: skip
    path = f"{collection}/{test_id}"
    try:
        # What Kopf does on the main resource, and the operator's status patch.
        operator.merge_patch(path, {"metadata": {
            "finalizers": [f"{GROUP}/cleanup"],
            "annotations": {f"{GROUP}/last-handled-configuration": "{}"}}})  # fmt: skip
        operator.merge_patch(f"{path}/status", {"status": {"observedGeneration": 1}})
        body = admin.get(path)
        assert body["metadata"]["finalizers"] == [f"{GROUP}/cleanup"]
        assert body["status"]["observedGeneration"] == 1

        spec = {"spec": {"remediation": {"mode": "Enforce"}}}
        assert "changes its spec" in fenced(POLICIES, operator.merge_patch, path, spec)
        for patch in (
            {"metadata": {"labels": {"team": "evil"}}},
            {"metadata": {"annotations": {"argocd.argoproj.io/sync-options": "Prune=false"}}},
            {"metadata": {"finalizers": [f"{GROUP}/cleanup", "example.com/hold"]}},
        ):
            fenced(POLICIES, operator.merge_patch, path, patch)
        assert admin.get(path)["spec"]["remediation"]["mode"] == "Audit"
        operator.merge_patch(path, {"metadata": {"finalizers": None}})  # Kopf releasing it
    finally:
        admin.merge_patch(path, {"metadata": {"finalizers": None}})
        admin.delete(path)


# --- the job namespace ----------------------------------------------------------------------

JOBS = f"/apis/batch/v1/namespaces/{JOB_NAMESPACE}/jobs"
PODS = f"/api/v1/namespaces/{JOB_NAMESPACE}/pods"


def job(name: str, node: str, *, agent: bool) -> dict[str, Any]:
    """The operator's agent Job for `node` (an Audit check). With `agent`, the simulated kubelet
    really runs the agent (it completes); without, the pod lacks the agent label the simulated
    kubelet looks for (the fence does not look at labels) and just stays Running."""
    body = agent_job(name, node)
    if not agent:
        body["spec"]["template"]["metadata"]["labels"] = {"app": name}
    return body


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": JOB_NAMESPACE},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def job_pod(admin: Rest, name: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = admin.get(PODS, labelSelector=f"batch.kubernetes.io/job-name={name}")["items"]
        return pods[0] if pods else None

    pod: dict[str, Any] = wait_for(found, timeout=60, what=f"the pod of Job {name}")
    return pod


def condition(body: dict[str, Any], kind: str) -> bool:
    conditions = body.get("status", {}).get("conditions", [])
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def test_operator_creates_jobs_the_job_controller_runs_and_the_operator_deletes(
    operator: Rest, api_client: Any, node_factory: Any, test_id: str
) -> None:
    admin = Rest(api_client)
    node = node_factory(netns=False)
    name = f"{test_id}-agent"
    operator.create(JOBS, job(name, node.name, agent=True))
    # The Job controller creates the pod (fenced: only it, only for a Job), removes its
    # tracking finalizer and writes the Job's status; the kubelet writes the pod's.
    wait_for(lambda: condition(admin.get(f"{JOBS}/{name}"), "Complete"), timeout=60,
             what=f"Job {name} Complete")  # fmt: skip
    pod = job_pod(admin, name)
    assert [r["kind"] for r in pod["metadata"]["ownerReferences"]] == ["Job"]
    operator.delete(f"{JOBS}/{name}", propagationPolicy="Background")
    wait_for(lambda: not admin.get(PODS, labelSelector=f"batch.kubernetes.io/job-name={name}")
             ["items"], timeout=60, what="the garbage collector to delete the pod")  # fmt: skip


def test_operator_creates_no_pod_in_the_job_namespace_even_if_rbac_let_it(
    operator: Rest, api_client: Any, kubectl: Kubectl, node_factory: Any, test_id: str
) -> None:
    node = node_factory(netns=False)
    body = pod_body(f"{test_id}-direct", node.name)
    assert "cannot create resource" in refusal(operator.create, PODS, body)  # RBAC first
    # An overlay that widened the operator's Role would still not get it a pod.
    account = "system:serviceaccount:nodesysctl-system:nodesysctl-operator"
    kubectl("create", "role", f"{test_id}-pods", "-n", JOB_NAMESPACE, "--verb=create",
            "--resource=pods")  # fmt: skip
    kubectl("create", "rolebinding", f"{test_id}-pods", "-n", JOB_NAMESPACE,
            f"--role={test_id}-pods", f"--user={account}")  # fmt: skip
    try:
        wait_for(lambda: kubectl("auth", "can-i", "create", "pods", "-n", JOB_NAMESPACE,
                                 f"--as={account}", check=False).stdout.strip() == "yes",
                 timeout=30, what="the extra grant to take effect")  # fmt: skip
        message = fenced(CREATE, operator.create, PODS, body)
        assert "only the Job controller creates pods" in message
    finally:
        kubectl("delete", "rolebinding,role", f"{test_id}-pods", "-n", JOB_NAMESPACE)


@pytest.fixture
def editor(kubectl: Kubectl, fence: list[dict[str, Any]], test_id: str) -> Iterator[str]:
    """`--as` a user bound to the `edit` ClusterRole in the job namespace only."""
    user = f"{test_id}-editor"
    kubectl("create", "rolebinding", user, "-n", JOB_NAMESPACE, "--clusterrole=edit",
            f"--user={user}")  # fmt: skip
    yield f"--as={user}"
    kubectl("delete", "rolebinding", user, "-n", JOB_NAMESPACE, "--ignore-not-found")


@pytest.fixture
def running_job(operator: Rest, api_client: Any, node_factory: Any, test_id: str
                ) -> Iterator[tuple[str, str]]:  # fmt: skip
    """(Job, pod) created by the operator and the Job controller; the pod is Running."""
    admin = Rest(api_client)
    node = node_factory(netns=False)
    name = f"{test_id}-idle"
    operator.create(JOBS, job(name, node.name, agent=False))
    pod = job_pod(admin, name)["metadata"]["name"]
    wait_for(lambda: admin.get(f"{PODS}/{pod}")["status"].get("phase") == "Running",
             timeout=60, what=f"pod {pod} Running")  # fmt: skip
    yield name, pod
    admin.delete(f"{JOBS}/{name}", propagationPolicy="Background")


def test_job_namespace_editor_creates_no_job_and_no_pod(
    kubectl: Kubectl, editor: str, node_factory: Any, test_id: str, tmp_path: Path
) -> None:
    node = node_factory(netns=False)
    manifest = tmp_path / "job.json"
    manifest.write_text(json.dumps(job(f"{test_id}-mine", node.name, agent=True)))
    message = kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), editor)
    assert "only the nodesysctl operator creates Jobs" in message
    manifest.write_text(json.dumps(pod_body(f"{test_id}-mine", node.name)))
    kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), editor)
    # A pod controller of its own gets nowhere either: its controller's pods are refused.
    kubectl("create", "deployment", f"{test_id}-dep", "-n", JOB_NAMESPACE, "--image=busybox",
            editor)  # fmt: skip
    try:

        def refused() -> bool:
            events = kubectl("get", "events", "-n", JOB_NAMESPACE, "-o", "json",
                             "--field-selector", "reason=FailedCreate").stdout  # fmt: skip
            return any(f"{test_id}-dep" in e["involvedObject"]["name"]
                       and CREATE in e["message"] for e in json.loads(events)["items"])  # fmt: skip

        wait_for(refused, timeout=60, what="the ReplicaSet controller's pod to be refused")
    finally:
        kubectl("delete", "deployment", f"{test_id}-dep", "-n", JOB_NAMESPACE)


def test_nobody_gets_a_shell_in_an_agent_pod(
    kubectl: Kubectl, editor: str, running_job: tuple[str, str]
) -> None:
    _, pod = running_job
    ns = f"--namespace={JOB_NAMESPACE}"
    for who in (editor, None):  # the editor, and the cluster admin too
        as_who = [who] if who else []
        message = kubectl_fenced(kubectl, NO_SHELL, "exec", ns, pod, *as_who, "--", "true")
        assert "nobody may use exec" in message
        kubectl_fenced(kubectl, NO_SHELL, "attach", ns, pod, *as_who)
        kubectl_fenced(kubectl, NO_SHELL, "port-forward", ns, pod, "18080:80", *as_who,
                       timeout=30)  # fmt: skip
        proxy = f"/api/v1/namespaces/{JOB_NAMESPACE}/pods/{pod}/proxy/"
        kubectl_fenced(kubectl, NO_SHELL, "get", "--raw", proxy, *as_who)
    # `kubectl debug` (an ephemeral container): `edit` may not; the admin is fenced.
    kubectl_fenced(kubectl, NO_SHELL, "debug", ns, pod, "--image=busybox", "--", "sh")


def test_job_namespace_editor_cannot_touch_what_the_operator_trusts(
    kubectl: Kubectl, editor: str, running_job: tuple[str, str]
) -> None:
    name, pod = running_job
    ns = f"--namespace={JOB_NAMESPACE}"
    for target in (f"job/{name}", f"pod/{pod}"):
        removals = ["job-name-", "controller-uid-"] if target.startswith("pod/") else []
        for label in (f"{LABEL_POLICY}=forged", f"{LABEL_APP}=x",
                      "batch.kubernetes.io/job-name=other", *removals):  # fmt: skip
            message = kubectl_fenced(kubectl, INTEGRITY, "label", ns, target, label,
                                     "--overwrite", editor)  # fmt: skip
            assert "labels and annotations the operator trusts" in message
        kubectl_fenced(kubectl, INTEGRITY, "annotate", ns, target, f"{GROUP}/node=other",
                       "--overwrite", editor)  # fmt: skip
        # Keys the operator does not read stay the editor's to change.
        kubectl("label", ns, target, "color=blue", editor)
    image = {"spec": {"containers": [{"name": "agent", "image": "evil.example/rootkit"}]}}
    kubectl_fenced(kubectl, INTEGRITY, "patch", ns, f"pod/{pod}", "-p", json.dumps(image),
                   editor)  # fmt: skip
    kubectl_fenced(kubectl, INTEGRITY, "patch", ns, f"job/{name}", "--type=merge",
                   "-p", '{"spec": {"activeDeadlineSeconds": 5}}', editor)  # fmt: skip
    owners = json.loads(kubectl("get", ns, f"pod/{pod}", "-o",
                                "jsonpath={.metadata.ownerReferences}").stdout)  # fmt: skip
    forged = [{**owners[0], "uid": "00000000-0000-0000-0000-000000000000"}]
    message = kubectl_fenced(kubectl, INTEGRITY, "patch", ns, f"pod/{pod}", "--type=merge",
                             "-p", json.dumps({"metadata": {"ownerReferences": forged}}),
                             editor)  # fmt: skip
    assert "owner references" in message


def test_break_glass_and_the_job_controllers_name(
    kubectl: Kubectl, running_job: tuple[str, str], node_factory: Any, test_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Who could delete the fence's bindings anyway (system:masters, a cluster-admin) passes
    the create, agent-jobs, integrity and node-results rules; the Job controller only for a
    Job's pod."""
    name, pod = running_job
    node = node_factory(netns=False)
    admin_user = f"{test_id}-admin"
    kubectl("create", "clusterrolebinding", admin_user, "--clusterrole=cluster-admin",
            f"--user={admin_user}")  # fmt: skip
    wait_for(lambda: kubectl("auth", "can-i", "delete", "validatingadmissionpolicybindings",
                             f"--as={admin_user}", check=False).stdout.strip() == "yes",
             timeout=30, what="the cluster-admin binding to take effect")  # fmt: skip
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod_body(f"{test_id}-glass", node.name)))
    # Not the operator's shape either: break glass may run something else by hand.
    by_hand = tmp_path / "job.json"
    body = job(f"{test_id}-glass", node.name, agent=False)
    body["spec"]["template"]["spec"]["containers"][0].update(image="busybox", command=["true"])
    by_hand.write_text(json.dumps(body))
    dry = ["--dry-run=server", f"--namespace={JOB_NAMESPACE}"]
    try:
        for who in ([], [f"--as={admin_user}"]):
            kubectl("create", "-f", str(manifest), *dry, *who)
            kubectl("create", "-f", str(by_hand), *dry, *who)
            kubectl("label", f"pod/{pod}", f"{LABEL_POLICY}=by-hand", "--overwrite", *dry, *who)
            kubectl("annotate", f"node/{node.name}", f"{GROUP}/result.{test_id}=by-hand",
                    "--overwrite", "--dry-run=server", *who)  # fmt: skip
    finally:
        kubectl("delete", "clusterrolebinding", admin_user)

    job_controller = "--as=system:serviceaccount:kube-system:job-controller"
    message = kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), *dry, job_controller)
    assert "for the operator's Jobs" in message
    uid = kubectl("get", f"job/{name}", f"--namespace={JOB_NAMESPACE}", "-o",
                  "jsonpath={.metadata.uid}").stdout  # fmt: skip
    owned = pod_body(f"{test_id}-owned", node.name)
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job",
        "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}]  # fmt: skip
    manifest.write_text(json.dumps(owned))
    kubectl("create", "-f", str(manifest), *dry, job_controller)
    # Another controller's pods are refused even with a Job owner written on them.
    kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), *dry,
                   "--as=system:serviceaccount:kube-system:replicaset-controller")  # fmt: skip
    # And a CronJob there gets no Job: its controller is not the operator.
    manifest.write_text(json.dumps(job(f"{test_id}-cron", node.name, agent=False)))
    cronjob_controller = "--as=system:serviceaccount:kube-system:cronjob-controller"
    message = kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), *dry,
                             cronjob_controller)  # fmt: skip
    assert "only the nodesysctl operator creates Jobs" in message


# --- what the operator's token may run: the agent, nothing else ------------------------------


def dry_create(rest: Rest, body: dict[str, Any]) -> Any:
    """POST the Job as a server-side dry run: all of admission, nothing stored."""
    return rest.request("POST", JOBS, query={"dryRun": "All"}, body=body)


SYSCTL_DIRS = ("/etc/sysctl.d", "/usr/local/lib/sysctl.d")
MODES = [
    {"mode": mode, "persist": persist, "sysctlDir": directory}
    for mode in ("Enforce", "Audit")
    for persist in (True, False)
    for directory in SYSCTL_DIRS
]


def mode_id(remediation: dict[str, Any]) -> str:
    persist = "persist" if remediation["persist"] else "no-persist"
    return f"{remediation['mode']}-{persist}-{remediation['sysctlDir'].strip('/').split('/')[0]}"


@pytest.mark.parametrize("remediation", MODES, ids=mode_id)
def test_operator_may_create_the_agent_job_it_renders(
    operator: Rest, node_factory: Any, test_id: str, remediation: dict[str, Any]
) -> None:
    """Every Job build_agent_job renders passes, as the API server defaults it (dry run: the
    admission chain runs in full, nothing is stored): with the other sysctl directory to clean
    too, and with the policy's own Job settings."""
    node = node_factory(netns=False)
    resources = {"requests": {"cpu": "20m"}, "limits": {"memory": "64Mi"}}
    settings = {"tolerations": [{"operator": "Exists"}], "backoffLimit": 3, "resources": resources}
    [other] = [d for d in SYSCTL_DIRS if d != remediation["sysctlDir"]]
    cleaning = HostDirs(remediation["sysctlDir"], mounted=True, clean=(other,))
    for spec in ({"remediation": remediation}, {"remediation": remediation, "job": settings}):
        for dirs in (None, cleaning):
            dry_create(operator, agent_job(f"{test_id}-agent", node.name, spec=spec, dirs=dirs))


def agent(body: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = body["spec"]["template"]["spec"]["containers"][0]
    return container


def pod_of(body: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = body["spec"]["template"]["spec"]
    return pod


def root_mount(body: dict[str, Any]) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = agent(body)["volumeMounts"]
    [mount] = [m for m in mounts if m["mountPath"] == "/host"]
    return mount


# Each abuse of the operator's token: what it changes in the operator's own Job, and a piece of
# the agent-jobs rule's message that refuses it.
ABUSES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "another image": (lambda b: agent(b).update(image="evil.example/rootkit:latest"),
                      "not evil.example/rootkit:latest"),
    "the host's PID namespace": (lambda b: pod_of(b).update(hostPID=True), "PID or IPC"),
    "the host's IPC namespace": (lambda b: pod_of(b).update(hostIPC=True), "PID or IPC"),
    "a writable /": (lambda b: root_mount(b).update(readOnly=False), "read-only at /host"),
    "/ mounted elsewhere": (lambda b: root_mount(b).update(mountPath="/usr/local/lib"),
                            "read-only at /host"),
    "another hostPath": (lambda b: (
        pod_of(b)["volumes"].append({"name": "containerd", "hostPath": {
            "path": "/var/run/containerd", "type": "Directory"}}),
        agent(b)["volumeMounts"].append({"name": "containerd", "mountPath": "/run/containerd"})),
        "only the host paths"),
    "/ of another hostPath type": (lambda b: pod_of(b)["volumes"][-1]["hostPath"].update(
        type="DirectoryOrCreate"), "type Directory"),
    "another directory to clean": (lambda b: (
        pod_of(b)["volumes"].append({"name": "host-clean-0", "hostPath": {
            "path": "/etc", "type": "DirectoryOrCreate"}}),
        agent(b)["volumeMounts"].append({"name": "host-clean-0", "mountPath": "/host/etc"}),
        agent(b)["args"].__setitem__(slice(6, 6), ["--clean-dir", "/host/etc"])),
        "only the host paths"),
    "an emptyDir": (lambda b: pod_of(b)["volumes"].append({"name": "x", "emptyDir": {}}),
                    "no other volume"),
    "another command": (lambda b: agent(b).update(command=["sh", "-c", "id"]),
                        "runs only the agent"),
    "another interpreter": (lambda b: agent(b).update(command=["/host/usr/bin/python3", "-m",
                                                               "nodesysctl.agent"]),
                            "runs only the agent"),
    "other agent arguments": (lambda b: agent(b)["args"].__setitem__(3, "/host/proc/sys"),
                              "takes the operator's arguments"),
    "an environment variable": (lambda b: agent(b)["env"].append(
        {"name": "LD_PRELOAD", "value": "/host/tmp/x.so"}), "only environment variable"),
    "a lifecycle hook": (lambda b: agent(b).update(lifecycle={"postStart": {"exec": {
        "command": ["sh", "-c", "id"]}}}), "not lifecycle"),
    "a working directory": (lambda b: agent(b).update(workingDir="/host/tmp"), "not workingDir"),
    "an init container": (lambda b: pod_of(b).update(initContainers=[
        {**copy.deepcopy(agent(b)), "name": "init"}]), "not initContainers"),
    "a ServiceAccount": (lambda b: pod_of(b).update(serviceAccountName="nodesysctl-operator"),
                         "default ServiceAccount"),
    "a ServiceAccount token": (lambda b: pod_of(b).update(automountServiceAccountToken=True),
                               "mounts no token"),
    "a PriorityClass": (lambda b: pod_of(b).update(priorityClassName="system-node-critical"),
                        "PriorityClass"),
    "nodeName": (lambda b: pod_of(b).update(nodeName="elsewhere"), "not nodeName"),
}  # fmt: skip


def test_the_operators_token_cannot_run_a_privileged_pod_other_than_the_agent(
    operator: Rest, api_client: Any, node_factory: Any, test_id: str
) -> None:
    """With the operator's token alone, a Job with another image, the host's PID namespace and
    the host's / writable (what this token could run on any node before the agent-jobs rule) is
    refused and never made; so is each single step away from the operator's own Job."""
    admin = Rest(api_client)
    node = node_factory(netns=False)
    name = f"{test_id}-root"
    enforce = {"remediation": {"mode": "Enforce", "persist": True}}
    body = agent_job(name, node.name, spec=enforce)
    pod = pod_of(body)
    pod.update(hostPID=True, hostIPC=True)
    agent(body).update(image="evil.example/rootkit:latest")
    root_mount(body).pop("readOnly")
    fenced(AGENT_JOBS, operator.create, JOBS, body)
    with pytest.raises(ApiException) as missing:
        admin.get(f"{JOBS}/{name}")
    assert missing.value.status == 404

    for abuse, (change, expected) in ABUSES.items():
        body = agent_job(name, node.name, spec=enforce)
        change(body)
        message = fenced(AGENT_JOBS, dry_create, operator, body)
        assert expected in message, (abuse, message)


def test_what_the_operators_service_account_allows_its_jobs_to_run(
    kubectl: Kubectl, operator: Rest, fence: list[dict[str, Any]], node_factory: Any,
    test_id: str,
) -> None:  # fmt: skip
    """The operator's ServiceAccount says which images (besides its agent image), which
    interpreter and which PriorityClasses its Jobs may use, as --allowed-agent-images,
    --agent-python and --allowed-priority-classes do for the operator; its token cannot change
    them (no RBAC verb on ServiceAccounts)."""
    [account] = [d["metadata"] for d in fence if d["kind"] == "ServiceAccount"]
    where = ["-n", account["namespace"], f"serviceaccount/{account['name']}"]
    node = node_factory(netns=False)
    digest = f"mirror.example/agent@sha256:{'a' * 64}"
    spec = {"remediation": {"mode": "Audit"}, "job": {"priorityClassName": "nodesysctl-agents"}}
    allowed = agent_job(f"{test_id}-more", node.name, spec=spec,
                        settings=JobSettings(image=digest, python="python3.12"))  # fmt: skip

    def dry_run() -> Any:
        return dry_create(operator, allowed)

    fenced(AGENT_JOBS, dry_run)
    kubectl("annotate", *where, f"{GROUP}/allowed-agent-images=b.example/y:2, {digest}",
            f"{GROUP}/agent-python=python3.12",
            f"{GROUP}/allowed-priority-classes=nodesysctl-agents")  # fmt: skip
    try:

        def admitted() -> bool:
            try:
                dry_run()
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        wait_for(admitted, timeout=30, what="the ServiceAccount's new allowlist to be read")
        # The default interpreter is no longer the one configured; the agent image still is.
        python = copy.deepcopy(allowed)
        agent(python)["command"][0] = "python"
        assert "runs only the agent" in fenced(AGENT_JOBS, dry_create, operator, python)
        own = copy.deepcopy(allowed)
        agent(own)["image"] = JobSettings().image
        dry_create(operator, own)
        not_listed = copy.deepcopy(allowed)
        pod_of(not_listed)["priorityClassName"] = "system-node-critical"
        fenced(AGENT_JOBS, dry_create, operator, not_listed)
        patch = {"metadata": {"annotations": {f"{GROUP}/allowed-agent-images": "evil.example/x"}}}
        path = f"/api/v1/namespaces/{account['namespace']}/serviceaccounts/{account['name']}"
        assert "cannot patch resource" in refusal(operator.merge_patch, path, patch)  # RBAC
    finally:
        kubectl("annotate", *where, f"{GROUP}/allowed-agent-images-", f"{GROUP}/agent-python-",
                f"{GROUP}/allowed-priority-classes-")  # fmt: skip

    def refused() -> bool:
        try:
            dry_run()
        except ApiException as exc:
            return exc.status == 403 and AGENT_JOBS in str(exc.body)
        return False

    wait_for(refused, timeout=30, what="the ServiceAccount's allowlist to be read again")


def test_a_jobs_pod_template_cannot_change_after_create(
    operator: Rest, api_client: Any, node_factory: Any, test_id: str
) -> None:
    """Why the agent-jobs rule looks at CREATE only: the API server refuses any change to a
    Job's pod template but the scheduling directives of a suspended Job (even to an admin, whom
    the fence does not stop), and the operator may not update or patch Jobs at all."""
    admin = Rest(api_client)
    node = node_factory(netns=False)
    name = f"{test_id}-frozen"
    body = agent_job(name, node.name)
    body["spec"]["suspend"] = True
    operator.create(JOBS, body)
    try:
        image = {"spec": {"template": {"spec": {"containers": [
            {"name": "agent", "image": "evil.example/rootkit:latest"}]}}}}  # fmt: skip
        assert "cannot patch resource" in refusal(operator.merge_patch, f"{JOBS}/{name}", image)
        with pytest.raises(ApiException) as caught:
            admin.merge_patch(f"{JOBS}/{name}", image)
        assert caught.value.status == 422, caught.value.body
        assert "field is immutable" in str(caught.value.body)
        volumes: list[dict[str, Any]] = [{"hostPath": {"path": "/"}}, {"emptyDir": {}}]
        for volume in volumes:
            patch = {"spec": {"template": {"spec": {"volumes": [{"name": "host-x", **volume}]}}}}
            with pytest.raises(ApiException) as caught:
                admin.merge_patch(f"{JOBS}/{name}", patch)
            assert caught.value.status == 422, caught.value.body
    finally:
        admin.delete(f"{JOBS}/{name}", propagationPolicy="Background")


# --- a node's own requests, and the fence without its parameter ----------------------------


def test_a_node_may_relabel_itself_but_not_put_a_pod_in_the_job_namespace(
    kubectl: Kubectl, fence: list[dict[str, Any]], node_factory: Any, test_id: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A kubelet (`system:node:<name>`) changes its own Node's labels as it likes (the fence does
    not look; NodeRestriction, where enabled, keeps it off `node-restriction.kubernetes.io/`
    labels): it can walk out of a policy's nodeSelector. It cannot put a pod in the job
    namespace, not even a mirror pod of its own (the Node authorizer grants nodes `create`
    on pods for those)."""
    node = node_factory(netns=False)
    kubelet = [f"--as=system:node:{node.name}", "--as-group=system:nodes"]
    kubectl("label", f"node/{node.name}", "example.com/pool=checked", *kubelet)
    kubectl("label", f"node/{node.name}", "example.com/pool-", *kubelet)
    uid = kubectl("get", f"node/{node.name}", "-o", "jsonpath={.metadata.uid}").stdout
    mirror = pod_body(f"{test_id}-static", node.name)
    mirror["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "forged"}
    mirror["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node",
        "name": node.name, "uid": uid, "controller": True}]  # fmt: skip
    manifest = tmp_path / "mirror.json"
    manifest.write_text(json.dumps(mirror))
    message = kubectl_fenced(kubectl, CREATE, "create", "-f", str(manifest), "--dry-run=server",
                             *kubelet)  # fmt: skip
    assert "only the Job controller creates pods" in message


def test_without_the_operators_binding_only_the_job_namespace_is_closed(
    devcluster: DevCluster, fence: list[dict[str, Any]], kubectl: Kubectl, api_client: Any,
    test_namespace: str, test_id: str, node_factory: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """An uninstall may prune the operator's ClusterRoleBinding (the fence's parameter) before
    the fence: the cluster-wide rules must not then refuse everyone's Node and workload
    updates; the job namespace refuses pods until the binding is back."""
    [binding] = [d for d in fence if d["kind"] == "ClusterRoleBinding"]
    admin = Rest(api_client)
    node = node_factory(netns=False)
    path = f"/apis/apps/v1/namespaces/{test_namespace}/deployments"
    admin.create(path, workload("Deployment", "web", test_id))
    kubectl("delete", "clusterrolebinding", binding["metadata"]["name"])
    try:
        manifest = tmp_path / "pod.json"
        manifest.write_text(json.dumps(pod_body(f"{test_id}-orphan", node.name)))

        def job_namespace_closed() -> bool:
            job_controller = "--as=system:serviceaccount:kube-system:job-controller"
            out = kubectl("create", "-f", str(manifest), "--dry-run=server", job_controller,
                          check=False)  # fmt: skip
            return out.returncode != 0 and "no params found" in out.stderr

        wait_for(job_namespace_closed, timeout=60, what="the job namespace to fail closed")
        # As kubelets, the node lifecycle controller and users update them every day:
        kubectl("label", f"node/{node.name}", "example.com/rack=r1",
                f"--as=system:node:{node.name}", "--as-group=system:nodes")  # fmt: skip
        kubectl("taint", "nodes", node.name, "example.com/maintenance=yes:NoSchedule",
                "--as=system:serviceaccount:kube-system:node-controller")  # fmt: skip
        admin.merge_patch(f"{path}/web", {"spec": {"replicas": 2}})
        kubectl("annotate", f"node/{node.name}", f"{GROUP}/result.{test_id}=by-hand")
    finally:
        apply_fenced(devcluster, [binding] + [d for d in fence if d["kind"] in FENCE_KINDS],
                     tmp_path)  # fmt: skip
