"""The admission fence (manifests/base/fence.yaml) as every overlay renders it.

The fence's CEL names the operator's ServiceAccount only through its parameter, the operator's
ClusterRoleBinding, so what must hold in every rendering is the chain binding -> paramRef ->
ClusterRoleBinding -> subject == the rendered ServiceAccount (name AND namespace). Checked for
the shipped overlays and for two made-up ones that rename harder than they do (a name suffix on
top of the private-registry prefix; the ServiceAccount moved to another namespace). That the
API server then really fences the renamed identity is tests/integration/test_manifests_rbac.py;
each rule's effect is tests/integration/test_fence.py.
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
    "nodesysctl-job-namespace-integrity": "Deny",
    "nodesysctl-job-namespace-no-shell": None,
}
JOB_NAMESPACE_POLICIES = {name for name in POLICIES if "-job-namespace-" in name}

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
        assert policy["spec"]["paramKind"] == {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
        }
        param = spec["paramRef"]
        assert param["parameterNotFoundAction"] == POLICIES[base], base
        if POLICIES[base] == "Allow":
            assert base not in JOB_NAMESPACE_POLICIES
        assert "namespace" not in param
        assert "selector" not in param
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
    [role] = of_kind(docs, "Role")
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
