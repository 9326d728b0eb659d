"""The Kustomize manifests, rendered the way users apply them: every overlay's invariants.

Each overlay under `manifests/overlays/` is rendered with `kubectl kustomize` (the kubectl the
control-plane build made, else one on PATH) and checked for: least-privilege RBAC (exactly the
rules the operator needs; no wildcard, no secrets, no exec), the operator pod's hardening, the
namespaces' Pod Security labels, the agent image agreeing with the operator image, and the CRD
being `crds/nodesysctlpolicies.yaml` itself (one source of truth). The Dockerfile gets a few
structural checks too. Real-API-server checks are in tests/integration/test_manifests_rbac.py.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devcluster.binaries import candidate_dirs
from nodesysctl import GROUP, PLURAL
from nodesysctl.api import NodeSysctlPolicySpec, TaintEffect, Toleration
from nodesysctl.availability import NodeAvailability, Taint, judge
from nodesysctl.config import OperatorConfig
from nodesysctl.jobs import JobSettings
from nodesysctl.labels import READINESS_TAINT_PREFIX

REPO = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO / "manifests" / "overlays"
CRD_PATH = REPO / "crds" / "nodesysctlpolicies.yaml"
OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())

OPERATOR_NAMESPACE = "nodesysctl-system"
JOB_NAMESPACE = "nodesysctl-jobs"
OPERATOR_CONTAINER = "operator"

# (apiGroup, resource) -> verbs: everything the operator may do, and nothing else.
CLUSTER_RULES: dict[tuple[str, str], frozenset[str]] = {
    (GROUP, PLURAL): frozenset({"get", "list", "watch", "patch"}),
    (GROUP, f"{PLURAL}/status"): frozenset({"get", "patch"}),
    ("", "nodes"): frozenset({"get", "list", "watch", "patch"}),
    ("", "pods"): frozenset({"list"}),
    ("", "pods/eviction"): frozenset({"create"}),
    ("apps", "replicasets"): frozenset({"list"}),
    ("apps", "deployments"): frozenset({"get", "patch"}),
    ("apps", "statefulsets"): frozenset({"get", "patch"}),
    ("apps", "daemonsets"): frozenset({"get"}),
    ("", "events"): frozenset({"create"}),
}
JOB_NAMESPACE_RULES: dict[tuple[str, str], frozenset[str]] = {
    ("batch", "jobs"): frozenset({"get", "list", "watch", "create", "delete"}),
    ("", "pods"): frozenset({"get", "list", "watch"}),
    ("", "events"): frozenset({"list"}),  # FailedCreate: a check's pod the cluster refused
}
# The leader-election Lease, in the operator's namespace: get and update by name only, create
# alone (RBAC cannot limit a create by name).
LEASE_NAME = "nodesysctl-operator"
LEADER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [LEASE_NAME],
        "verbs": ["get", "update"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
FORBIDDEN_RESOURCES = {
    "secrets",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "pods/ephemeralcontainers",
    "nodes/proxy",
    "serviceaccounts/token",
    "customresourcedefinitions",
    "clusterroles",
    "clusterrolebindings",
    "roles",
    "rolebindings",
}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection", "update"}


def find_kubectl() -> Path | None:
    for directory in candidate_dirs():
        kubectl = directory / "kubectl"
        if os.access(kubectl, os.X_OK):
            return kubectl
    found = shutil.which("kubectl")
    return Path(found) if found else None


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("no kubectl for kustomize: run `make controlplane` (or put kubectl on PATH)")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == OPERATOR_CONTAINER]
    found: dict[str, Any] = container
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def role_in(docs: tuple[dict[str, Any], ...], namespace: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, "Role") if d["metadata"]["namespace"] == namespace]
    assert len(found) == 1, f"expected one Role in {namespace}, found {len(found)}"
    return found[0]


def binding_in(docs: tuple[dict[str, Any], ...], namespace: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, "RoleBinding") if d["metadata"]["namespace"] == namespace]
    assert len(found) == 1, f"expected one RoleBinding in {namespace}, found {len(found)}"
    return found[0]


def rule_table(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                table.setdefault((group, resource), set()).update(rule.get("verbs", []))
    return table


def test_there_are_overlays() -> None:
    assert {"default", "audit-baseline", "private-registry"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_named_objects(overlay: str) -> None:
    docs = render(overlay)
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc["metadata"].get("name"), doc
    kinds = {d["kind"] for d in docs}
    assert {
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    } <= kinds
    assert "Secret" not in kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaced_objects_live_in_our_namespaces(overlay: str) -> None:
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "NodeSysctlPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for doc in render(overlay):
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_scoped:
            assert namespace is None, doc["metadata"]
        else:
            assert namespace in {OPERATOR_NAMESPACE, JOB_NAMESPACE}, doc["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_is_the_one_in_crds(overlay: str) -> None:
    source = yaml.safe_load(CRD_PATH.read_text())
    rendered = only(render(overlay), "CustomResourceDefinition")
    rendered = {**rendered, "metadata": dict(rendered["metadata"])}
    labels = rendered["metadata"].pop("labels", {})
    # Overlays may only add labels (app.kubernetes.io/part-of, ...); nothing else may change.
    assert labels.items() >= source["metadata"].get("labels", {}).items()
    source["metadata"].pop("labels", None)
    assert rendered == source


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_labels(overlay: str) -> None:
    labels = {
        ns["metadata"]["name"]: ns["metadata"].get("labels", {})
        for ns in of_kind(render(overlay), "Namespace")
    }
    assert set(labels) == {OPERATOR_NAMESPACE, JOB_NAMESPACE}
    for mode in ("enforce", "audit", "warn"):
        assert labels[OPERATOR_NAMESPACE][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    # The agent Jobs are privileged + hostNetwork + hostPath: only this namespace admits them.
    assert labels[JOB_NAMESPACE]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_wildcards_no_secrets_no_exec(overlay: str) -> None:
    docs = render(overlay)
    roles = of_kind(docs, "ClusterRole") + of_kind(docs, "Role")
    assert roles
    for role in roles:
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], rule)
            assert not FORBIDDEN_RESOURCES & set(rule.get("resources", [])), rule
            forbidden = FORBIDDEN_VERBS
            if rule in LEADER_RULES and role["metadata"]["namespace"] == OPERATOR_NAMESPACE:
                forbidden = FORBIDDEN_VERBS - {"update"}  # the one named Lease only
            assert not forbidden & set(rule["verbs"]), rule


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_exactly_what_the_operator_needs(overlay: str) -> None:
    docs = render(overlay)
    cluster_role = only(docs, "ClusterRole")
    assert {d["metadata"]["namespace"] for d in of_kind(docs, "Role")} == {
        JOB_NAMESPACE,
        OPERATOR_NAMESPACE,
    }
    want_cluster = {key: set(verbs) for key, verbs in CLUSTER_RULES.items()}
    want_jobs = {key: set(verbs) for key, verbs in JOB_NAMESPACE_RULES.items()}
    assert rule_table(cluster_role["rules"]) == want_cluster
    assert rule_table(role_in(docs, JOB_NAMESPACE)["rules"]) == want_jobs
    assert role_in(docs, OPERATOR_NAMESPACE)["rules"] == LEADER_RULES


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bindings_tie_our_roles_to_our_service_account(overlay: str) -> None:
    docs = render(overlay)
    account = only(docs, "ServiceAccount")
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": OPERATOR_NAMESPACE,
    }
    assert account["metadata"]["namespace"] == OPERATOR_NAMESPACE
    crb = only(docs, "ClusterRoleBinding")
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": only(docs, "ClusterRole")["metadata"]["name"],
    }
    assert crb["subjects"] == [subject]
    for namespace in (JOB_NAMESPACE, OPERATOR_NAMESPACE):
        rb = binding_in(docs, namespace)
        assert rb["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role_in(docs, namespace)["metadata"]["name"],
        }
        assert rb["subjects"] == [subject]
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    # Only the operator pod gets the token, not every pod that might use this account.
    assert account.get("automountServiceAccountToken") is False
    assert pod["automountServiceAccountToken"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_deployment_is_two_candidates_for_one_lease(overlay: str) -> None:
    docs = render(overlay)
    deployment = only(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == OPERATOR_NAMESPACE
    # Two pods, and only the Lease holder runs Kopf: a rolling update never runs two Kopfs.
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in operator_container(docs)["args"]
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = deployment["spec"]["template"]
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [term] = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    budget = only(docs, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_pod_is_hardened(overlay: str) -> None:
    pod = only(render(overlay), "Deployment")["spec"]["template"]["spec"]
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host)
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert len(pod["containers"]) == 1
    assert not pod.get("initContainers")
    container = operator_container(render(overlay))
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert not sc.get("privileged")
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("runAsUser", 65532) != 0
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) >= {"cpu", "memory"}
    # A read-only root needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_kopfs_liveness_endpoint(overlay: str) -> None:
    container = operator_container(render(overlay))
    args = container["args"]
    assert args[0] == "run"
    liveness = urlsplit(args[args.index("--liveness") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == liveness.path
        assert ports[http["port"]] == liveness.port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_and_agent_share_the_image_and_job_namespace(overlay: str) -> None:
    container = operator_container(render(overlay))
    env = env_of(container)
    assert env["NODESYSCTL_AGENT_IMAGE"] == container["image"]
    assert env["NODESYSCTL_JOB_NAMESPACE"] == JOB_NAMESPACE
    assert "--agent-image" not in container["args"]  # one place: the env var
    assert "--job-namespace" not in container["args"]


def test_default_overlay_uses_the_operators_built_in_defaults() -> None:
    container = operator_container(render("default"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"ghcr.io/nodesysctl/nodesysctl:{version}"
    assert container["image"] == OperatorConfig().agent_image == JobSettings().image
    assert OperatorConfig().job_namespace == JobSettings().namespace == JOB_NAMESPACE


def test_private_registry_overlay_rewrites_image_and_names() -> None:
    docs = render("private-registry")
    container = operator_container(docs)
    assert not container["image"].startswith("ghcr.io/")
    for kind in ("ServiceAccount", "ClusterRole", "Deployment", "PodDisruptionBudget"):
        assert only(docs, kind)["metadata"]["name"].startswith("corp-")
    for namespace in (JOB_NAMESPACE, OPERATOR_NAMESPACE):
        assert role_in(docs, namespace)["metadata"]["name"].startswith("corp-")
    # The Lease keeps its name (the --lease-name default the Role names; no object to prefix).
    assert role_in(docs, OPERATOR_NAMESPACE)["rules"] == LEADER_RULES
    # Namespaces and the CRD keep their names (the operator and the CRD depend on them).
    assert {n["metadata"]["name"] for n in of_kind(docs, "Namespace")} == {
        OPERATOR_NAMESPACE,
        JOB_NAMESPACE,
    }


def test_audit_baseline_ships_a_valid_audit_policy_for_every_node() -> None:
    policy = only(render("audit-baseline"), "NodeSysctlPolicy")
    spec = NodeSysctlPolicySpec.model_validate(policy["spec"])
    assert str(spec.remediation.mode) == "Audit"
    assert not policy["spec"].get("nodeSelector")  # empty = every node


# --- the image ---------------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            yield keyword.upper(), rest.strip()


def test_dockerfile_base_is_pinned_and_shared() -> None:
    bases = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) == 2, "multi-stage: builder + final"
    assert bases[0] == bases[1]
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases[0])


def test_dockerfile_runs_the_operator_as_non_root() -> None:
    instructions = list(dockerfile_instructions())
    final = instructions[
        max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM") :
    ]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users == ["65532:65532"]
    assert ("ENTRYPOINT", '["nodesysctl"]') in final
    assert ("CMD", '["run"]') in final
    # The agent Job runs `python -m nodesysctl.agent`: python must resolve to the venv.
    assert any(k == "ENV" and "PATH=/opt/venv/bin:$PATH" in rest for k, rest in final)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_operator_tolerates_the_readiness_taint_it_clears(overlay: str) -> None:
    """Nodes that all register tainted must still run the operator that clears the taint."""
    pod = only(render(overlay), "Deployment")["spec"]["template"]["spec"]
    node = NodeAvailability(taints=(Taint(READINESS_TAINT_PREFIX, "", TaintEffect.NO_EXECUTE),))
    tolerations = [Toleration.model_validate(t) for t in pod["tolerations"]]
    assert judge(node, tolerations) is None
    # ... and nothing else: a cordon or another taint still keeps it off a node.
    other = NodeAvailability(taints=(Taint("example.com/dedicated", "", TaintEffect.NO_SCHEDULE),))
    assert judge(other, tolerations) is not None
