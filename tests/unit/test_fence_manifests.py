"""The admission fence (manifests/base/fence.yaml) as every overlay renders it.

The fence's CEL names the operator's ServiceAccount only through its parameter, the operator's
ClusterRoleBinding, so what must hold in every rendering is the chain binding -> paramRef ->
ClusterRoleBinding -> subject == the rendered ServiceAccount (name AND namespace). The agent-jobs
policy's parameter is that ServiceAccount itself (its annotations say what the agent Jobs may
run): its paramRef must name it, and the annotations must say what the Deployment configures.
Checked for the shipped overlays and for two made-up ones that rename harder than they do (a
name suffix on top of the private-registry prefix; the ServiceAccount moved to another
namespace). That the API server then really fences the renamed identity is
tests/integration/test_manifests_rbac.py; each rule's effect is tests/integration/test_fence.py.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodesysctl import GROUP, labels
from nodesysctl.api import SYSCTL_DIRS, NodeSysctlPolicySpec
from nodesysctl.config import split_list
from nodesysctl.jobs import (
    DEFAULT_AGENT_PYTHON,
    HOST_ROOT,
    TERMINATION_LOG,
    JobSettings,
    build_agent_job,
)
from nodesysctl.planning import CheckOrder, CheckReason, HostDirs

from .test_crd import spec_schema
from .test_manifests import JOB_NAMESPACE, OVERLAYS, OVERLAYS_DIR, env_of, find_kubectl
from .test_manifests import operator_container as operator_container_of

VAP = "ValidatingAdmissionPolicy"
VAPB = "ValidatingAdmissionPolicyBinding"
# Each policy of the fence -> what its binding does when the parameter (the operator's
# ClusterRoleBinding) is missing, or None if it has no parameter. The job namespace fails
# closed; the cluster-wide policies match everyone's Node and workload updates, so they must
# not refuse them all during an uninstall (fence.yaml says why).
POLICIES = {
    "nodesysctl-operator-workloads": "Allow",
    "nodesysctl-operator-nodes": "Allow",
    "nodesysctl-operator-policies": "Allow",
    "nodesysctl-node-results": "Allow",
    "nodesysctl-job-namespace-create": "Deny",
    "nodesysctl-job-namespace-agent-jobs": "Deny",
    "nodesysctl-job-namespace-integrity": "Deny",
    "nodesysctl-job-namespace-no-shell": None,
}
JOB_NAMESPACE_POLICIES = {name for name in POLICIES if "-job-namespace-" in name}
AGENT_JOBS = "nodesysctl-job-namespace-agent-jobs"
# The policies whose parameter is the operator's ServiceAccount (the others': its binding).
SERVICE_ACCOUNT_PARAM = {AGENT_JOBS}
# The operator's settings the agent-jobs policy reads from the ServiceAccount: annotation ->
# the Deployment's environment variable, and whether it is a comma-separated list.
AGENT_SETTINGS = {
    f"{GROUP}/agent-image": ("NODESYSCTL_AGENT_IMAGE", False),
    f"{GROUP}/allowed-agent-images": ("NODESYSCTL_ALLOWED_AGENT_IMAGES", True),
    f"{GROUP}/agent-python": ("NODESYSCTL_AGENT_PYTHON", False),
    f"{GROUP}/allowed-priority-classes": ("NODESYSCTL_ALLOWED_PRIORITY_CLASSES", True),
}

# Made-up overlays, written into a temp dir; {base} is manifests/overlays relative to it.
SUFFIXED = """
resources: [{base}/private-registry]
nameSuffix: -v2
"""
MOVED = """
resources: [{base}/default]
namePrefix: acme-
patches:
  - target: {{kind: ServiceAccount}}
    patch: |-
      - op: replace
        path: /metadata/namespace
        value: acme-system
  # Kustomize never moves a paramRef's namespace (fence.yaml says so at the binding).
  - target: {{kind: ValidatingAdmissionPolicyBinding, name: nodesysctl-job-namespace-agent-jobs}}
    patch: |-
      - op: replace
        path: /spec/paramRef/namespace
        value: acme-system
"""


@functools.cache
def render_dir(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl for kustomize: run `make controlplane` (or put kubectl on PATH)")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def made_up_overlay(tmp_path: Path, text: str) -> Path:
    # Kustomize takes bases by relative path only.
    base = os.path.relpath(OVERLAYS_DIR, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(text.format(base=base))
    return tmp_path


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def unprefixed(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    """The fence's objects by their base name (overlays may prefix and suffix them)."""
    found: dict[str, dict[str, Any]] = {}
    for name, doc in by_name(docs, kind).items():
        [base] = [p for p in POLICIES if p in name]
        found[base] = doc
    return found


def check_fence_follows_the_service_account(docs: tuple[dict[str, Any], ...]) -> None:
    [account] = of_kind(docs, "ServiceAccount")
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }
    [cluster_role] = of_kind(docs, "ClusterRole")
    bindings = by_name(docs, "ClusterRoleBinding")
    policies = by_name(docs, VAP)
    fence = unprefixed(docs, VAPB)
    assert set(fence) == set(POLICIES)
    for base, binding in fence.items():
        spec = binding["spec"]
        assert spec["policyName"] in policies, (base, spec)
        policy = policies[spec["policyName"]]
        if POLICIES[base] is None:
            assert "paramKind" not in policy["spec"]
            assert "paramRef" not in spec
            continue
        param = spec["paramRef"]
        assert param["parameterNotFoundAction"] == POLICIES[base], base
        if POLICIES[base] == "Allow":
            assert base not in JOB_NAMESPACE_POLICIES
        assert "selector" not in param
        if base in SERVICE_ACCOUNT_PARAM:
            assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ServiceAccount"}
            # Exactly the rendered ServiceAccount, name AND namespace.
            assert (param["name"], param["namespace"]) == (subject["name"], subject["namespace"])
            continue
        assert policy["spec"]["paramKind"] == {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
        }
        assert "namespace" not in param
        assert param["name"] in bindings, f"{base}: paramRef {param['name']} is no binding here"
        crb = bindings[param["name"]]
        # The parameter is the operator's own binding: its role, and exactly its account.
        assert crb["roleRef"]["name"] == cluster_role["metadata"]["name"]
        assert crb["subjects"] == [subject], (base, crb["subjects"], subject)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fence_follows_the_service_account_in_every_overlay(overlay: str) -> None:
    check_fence_follows_the_service_account(render_dir(OVERLAYS_DIR / overlay))


def test_fence_follows_a_prefixed_and_suffixed_service_account(tmp_path: Path) -> None:
    docs = render_dir(made_up_overlay(tmp_path, SUFFIXED))
    [account] = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "corp-nodesysctl-operator-v2"
    check_fence_follows_the_service_account(docs)


def test_fence_follows_a_service_account_moved_to_another_namespace(tmp_path: Path) -> None:
    docs = render_dir(made_up_overlay(tmp_path, MOVED))
    [account] = of_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "acme-nodesysctl-operator"
    assert account["metadata"]["namespace"] == "acme-system"
    check_fence_follows_the_service_account(docs)


def test_a_moved_service_account_without_the_paramref_patch_fails_closed(tmp_path: Path) -> None:
    """Forgetting to move the agent-jobs binding's paramRef leaves it naming a ServiceAccount
    that is not there: the binding finds no parameter and denies (no Job runs), it does not let
    unchecked Jobs through."""
    unpatched = MOVED[: MOVED.index("  # Kustomize never moves")]
    docs = render_dir(made_up_overlay(tmp_path, unpatched))
    [account] = of_kind(docs, "ServiceAccount")
    param = unprefixed(docs, VAPB)[AGENT_JOBS]["spec"]["paramRef"]
    assert (param["name"], param["namespace"]) == ("acme-nodesysctl-operator", "nodesysctl-system")
    assert account["metadata"]["namespace"] != param["namespace"]
    assert param["parameterNotFoundAction"] == "Deny"


def service_account_settings(docs: tuple[dict[str, Any], ...]) -> dict[str, tuple[str, ...]]:
    """What the agent-jobs policy reads from the ServiceAccount, parsed as its CEL does."""
    [account] = of_kind(docs, "ServiceAccount")
    annotations = account["metadata"].get("annotations", {})
    return {
        key: split_list(annotations[key]) if is_list else (annotations[key],)
        for key, (_, is_list) in AGENT_SETTINGS.items()
        if key in annotations
    }


def deployment_settings(docs: tuple[dict[str, Any], ...]) -> dict[str, tuple[str, ...]]:
    """The same settings as the operator takes them from its Deployment's environment."""
    env = env_of(operator_container_of(docs))
    return {
        key: split_list(env[name]) if is_list else (env[name],)
        for key, (name, is_list) in AGENT_SETTINGS.items()
        if name in env
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_account_says_what_the_deployment_configures(overlay: str) -> None:
    """The fence allows what the operator's ServiceAccount names; the operator runs what its
    Deployment configures: the two agree, the image is the Deployment's own, and no flag in
    `args` overrides the environment behind the fence's back."""
    docs = render_dir(OVERLAYS_DIR / overlay)
    container = operator_container_of(docs)
    assert service_account_settings(docs) == deployment_settings(docs)
    assert service_account_settings(docs)[f"{GROUP}/agent-image"] == (container["image"],)
    flags = ("--agent-image", "--allowed-agent-images", "--agent-python",
             "--allowed-priority-classes")  # fmt: skip
    assert [a for a in container["args"] if a.split("=")[0] in flags] == []


def test_the_default_service_account_names_the_dev_clusters_agent_image() -> None:
    """The dev cluster runs the operator as a process with its built-in defaults, and installs
    this ServiceAccount: its Jobs must pass the fence."""
    settings = service_account_settings(render_dir(OVERLAYS_DIR / "default"))
    assert settings == {f"{GROUP}/agent-image": (JobSettings().image,)}


def test_images_edits_rewrite_the_service_accounts_agent_image(tmp_path: Path) -> None:
    text = (
        "resources: [{base}/default]\n"
        "images:\n"
        "  - name: ghcr.io/nodesysctl/nodesysctl\n"
        "    newName: mirror.example/nodesysctl\n"
        "    digest: sha256:" + "a" * 64 + "\n"
    )
    docs = render_dir(made_up_overlay(tmp_path, text))
    image = f"mirror.example/nodesysctl@sha256:{'a' * 64}"
    assert operator_container_of(docs)["image"] == image
    assert service_account_settings(docs)[f"{GROUP}/agent-image"] == (image,)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fence_denies_and_fails_closed(overlay: str) -> None:
    docs = render_dir(OVERLAYS_DIR / overlay)
    for base, policy in unprefixed(docs, VAP).items():
        assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert policy["spec"]["failurePolicy"] == "Fail", base
        for validation in policy["spec"]["validations"]:
            # 403, like RBAC: the operator must not read a fence refusal as the user's fault.
            assert validation["reason"] == "Forbidden", (base, validation)
            assert "nodesysctl fence:" in validation.get("message", "") + validation.get(
                "messageExpression", ""
            )
    for base, binding in unprefixed(docs, VAPB).items():
        assert binding["spec"]["validationActions"] == ["Deny"], base
        assert "matchResources" not in binding["spec"], base  # the policy says what it matches


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fence_guards_the_job_namespace_the_operator_uses(overlay: str) -> None:
    docs = render_dir(OVERLAYS_DIR / overlay)
    job_namespace = env_of(operator_container_of(docs))["NODESYSCTL_JOB_NAMESPACE"]
    # The Role that grants the agent Jobs (the other one is the leader-election Lease's).
    [role] = [
        r for r in of_kind(docs, "Role") if any("jobs" in rule["resources"] for rule in r["rules"])
    ]
    assert job_namespace == role["metadata"]["namespace"] == JOB_NAMESPACE
    for base, policy in unprefixed(docs, VAP).items():
        selector = policy["spec"]["matchConstraints"].get("namespaceSelector")
        if base in JOB_NAMESPACE_POLICIES:
            assert selector == {"matchLabels": {"kubernetes.io/metadata.name": job_namespace}}
        else:
            assert selector == {}, base  # workloads and policies anywhere; Nodes have none


def fence_policy(name: str) -> dict[str, Any]:
    return unprefixed(render_dir(OVERLAYS_DIR / "default"), VAP)[name]


def variable(policy: dict[str, Any], name: str) -> str:
    [expression] = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == name]
    found: str = expression
    return found


def trusted_by_the_integrity_rule(key: str, legacy: list[str]) -> bool:
    """The key predicate the job-namespace integrity policy spells out in CEL."""
    return key.startswith((f"{GROUP}/", "batch.kubernetes.io/")) or key in legacy


def test_integrity_rule_covers_every_key_the_operator_trusts_on_jobs_and_pods() -> None:
    policy = fence_policy("nodesysctl-job-namespace-integrity")
    legacy = ast.literal_eval(variable(policy, "legacyKeys"))
    validations = " ".join(v["expression"] for v in policy["spec"]["validations"])
    # The predicate in CEL is the one mirrored here, for labels and for annotations.
    predicate = (
        "k.startsWith('nodesysctl.io/') || k.startsWith('batch.kubernetes.io/') || "
        "k in variables.legacyKeys"
    )
    assert validations.count(predicate) == 4
    trusted = [
        labels.LABEL_APP,
        labels.LABEL_MANAGED_BY,
        labels.LABEL_POLICY,
        labels.LABEL_NODE_HASH,
        labels.LABEL_SPEC_HASH,
        labels.ANNOTATION_NODE,
        labels.ANNOTATION_REASON,
        labels.ANNOTATION_BOOT_ID,
        labels.LABEL_JOB_NAME,
        labels.LABEL_JOB_NAME_LEGACY,
        "batch.kubernetes.io/controller-uid",
        "controller-uid",
    ]
    assert [key for key in trusted if not trusted_by_the_integrity_rule(key, legacy)] == []


def literal(policy: dict[str, Any], name: str) -> Any:
    return ast.literal_eval(variable(policy, name))


def rendered_jobs() -> list[dict[str, Any]]:
    """build_agent_job's Job for every mode, persist and sysctlDir, and with the other sysctl
    directory to clean."""
    jobs = []
    order = CheckOrder(node="n", reason=CheckReason.NEW, job_name="j", boot_id="b")
    for mode in ("Enforce", "Audit"):
        for persist in (True, False):
            for directory in SYSCTL_DIRS:
                remediation = {"mode": mode, "persist": persist, "sysctlDir": directory}
                spec = NodeSysctlPolicySpec.model_validate({"remediation": remediation})
                [other] = [d for d in SYSCTL_DIRS if d != directory]
                for dirs in (None, HostDirs(directory, mounted=True, clean=(other,))):
                    jobs.append(build_agent_job(policy="p", policy_uid="u", spec=spec,
                                                order=order, settings=JobSettings(),
                                                dirs=dirs))  # fmt: skip
    return jobs


def test_agent_jobs_rule_mirrors_what_build_agent_job_renders() -> None:
    """The agent-jobs policy's constants are the operator's, and every field build_agent_job
    renders is one the policy lets through (the API server's verdict on each mode is
    tests/integration/test_fence.py)."""
    policy = fence_policy(AGENT_JOBS)
    assert literal(policy, "hostRoot") == HOST_ROOT
    assert literal(policy, "terminationLog") == TERMINATION_LOG
    assert tuple(literal(policy, "sysctlDirs")) == SYSCTL_DIRS
    assert f".orValue('{DEFAULT_AGENT_PYTHON}')" in variable(policy, "python")
    validations = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "[variables.python, '-m', 'nodesysctl.agent']" in validations
    pod_fields, container_fields = literal(policy, "podFields"), literal(policy, "containerFields")
    mount_fields = literal(policy, "mountFields")
    jobs = rendered_jobs()
    assert any(
        "--clean-dir" in j["spec"]["template"]["spec"]["containers"][0]["args"] for j in jobs
    )
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert set(pod) <= set(pod_fields)
        [container] = pod["containers"]
        assert set(container) <= set(container_fields)
        assert container["command"][1:] == ["-m", "nodesysctl.agent"]
        assert all(set(m) <= set(mount_fields) for m in container["volumeMounts"])
        assert [e["name"] for e in container["env"]] == ["NODE_NAME"]
        assert not pod.get("hostPID")
        assert not pod.get("hostIPC")
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod
        args = container["args"]
        assert len(args) in {8, 10, 12}
        assert args[-2:] == ["--termination-log", literal(policy, "terminationLog")]
        for volume in pod["volumes"]:
            path, kind = volume["hostPath"]["path"], volume["hostPath"]["type"]
            assert (path, kind) == ("/", "Directory") or (
                path in SYSCTL_DIRS and kind in {"Directory", "DirectoryOrCreate"}
            )


def test_workload_rule_allows_exactly_the_restart_annotations() -> None:
    policy = fence_policy("nodesysctl-operator-workloads")
    owned = ast.literal_eval(variable(policy, "owned"))
    assert sorted(owned) == sorted([labels.RESTARTED_AT, labels.RESTART_WAVE])


def test_node_and_policy_rules_allow_the_operators_prefix() -> None:
    # Node results, boot ids; Kopf's finalizer, progress and diff-base annotations (handlers.py
    # configures them all under the group prefix).
    assert labels.ANNOTATION_RESULT_PREFIX.startswith(f"{GROUP}/")
    for name in ("nodesysctl-operator-nodes", "nodesysctl-operator-policies"):
        validations = " ".join(v["expression"] for v in fence_policy(name)["spec"]["validations"])
        assert f"k.startsWith('{GROUP}/')" in validations, name
    # ... and nobody else writes them on a Node.
    conditions = fence_policy("nodesysctl-node-results")["spec"]["matchConditions"]
    assert f"k.startsWith('{GROUP}/')" in conditions[0]["expression"]


def test_node_rule_allows_exactly_the_readiness_taint_prefix() -> None:
    # The CRD refuses a readiness key outside the prefix, so every taint a policy names is one
    # the fence lets the operator change.
    policy = fence_policy("nodesysctl-operator-nodes")
    assert ast.literal_eval(variable(policy, "readinessPrefix")) == labels.READINESS_TAINT_PREFIX
    rules = [
        r["rule"] for r in spec_schema()["properties"]["readiness"]["x-kubernetes-validations"]
    ]
    assert f"self.key.startsWith('{labels.READINESS_TAINT_PREFIX}')" in rules
