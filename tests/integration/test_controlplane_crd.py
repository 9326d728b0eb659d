"""The NodeSysctlPolicy CRD on the real API server: it installs, the built kubectl prints its
columns, every invalid policy is refused with its CEL/schema message, every example is accepted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import DevCluster
from nodesysctl.api import InvalidPolicy, parse_spec
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.kube import Rest
from nodesysctl.planning import CheckOrder, CheckReason
from tests.unit.test_crd_cel import Case, agreement_cases

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "nodesysctlpolicies.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID_DIR = REPO / "tests" / "data" / "invalid-policies"
INVALID = sorted(INVALID_DIR.glob("*.yaml"))
GROUP, VERSION, PLURAL = "nodesysctl.io", "v1alpha1", "nodesysctlpolicies"


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def expected_message(path: Path) -> str:
    expects = [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]
    assert len(expects) == 1, f"{path.name} needs exactly one '# expect: <message>' line"
    return expects[0]


def create_dry_run(api_client: Any, body: dict[str, Any]) -> Any:
    """Server-side dry run with strict field validation (what kubectl does by default)."""
    return client.CustomObjectsApi(api_client).create_cluster_custom_object(
        GROUP, VERSION, PLURAL, body, dry_run="All", field_validation="Strict"
    )


def refusal_text(exc: ApiException) -> str:
    """The Status's message and its causes' messages, as kubectl would print them."""
    status = json.loads(exc.body or "{}")
    causes = (status.get("details") or {}).get("causes") or []
    return "\n".join([status.get("message", ""), *(c.get("message", "") for c in causes)])


def printer_columns() -> list[str]:
    crd = load(CRD_FILE)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    return [column["name"] for column in version["additionalPrinterColumns"]]


def test_the_crd_installs_and_kubectl_get_nsp_prints_its_columns(
    devcluster: DevCluster, crds_installed: list[str]
) -> None:
    assert "nodesysctlpolicies.nodesysctl.io" in crds_installed
    example = EXAMPLES[0]
    name = load(example)["metadata"]["name"]
    devcluster.kubectl("apply", "-f", str(example))
    try:
        out = devcluster.kubectl("get", "nsp").stdout
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", *(c.upper() for c in printer_columns())]
        [row] = [r.split() for r in rows if r.split()[0] == name]
        mode = load(example)["spec"]["remediation"]["mode"]
        assert row[1] == mode
        # By the short name, the category and the full name alike.
        for ref in ("nodesysctlpolicy", "nodesysctlpolicies.nodesysctl.io", "nodesysctl"):
            assert name in devcluster.kubectl("get", ref, "-o", "name").stdout
    finally:
        devcluster.kubectl("delete", "nsp", name, "--wait=false")


def test_there_are_at_least_15_invalid_policies() -> None:
    if not INVALID_DIR.is_dir():
        pytest.skip(f"{INVALID_DIR} is not there yet")
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_the_api_server_refuses_an_invalid_policy_with_its_message(
    api_client: Any, crds_installed: list[str], path: Path
) -> None:
    with pytest.raises(ApiException) as refused:
        create_dry_run(api_client, load(path))
    assert refused.value.status in (400, 422), refused.value.body
    assert expected_message(path) in refusal_text(refused.value)


def test_kubectl_shows_the_refusal(devcluster: DevCluster, crds_installed: list[str]) -> None:
    if not INVALID:
        pytest.skip("no invalid policies yet")
    path = INVALID[0]
    proc = devcluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert proc.returncode != 0
    assert expected_message(path) in proc.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_api_server_accepts_an_example(
    api_client: Any, crds_installed: list[str], path: Path
) -> None:
    created = create_dry_run(api_client, load(path))
    assert created["metadata"]["name"] == load(path)["metadata"]["name"]
    # The server filled in the schema defaults.
    assert created["spec"]["remediation"]["mode"] in ("Enforce", "Audit")


def kubernetes_accepts(api_client: Any, case: Case) -> bool:
    """Kubernetes' own validation of what the policy passes on: the labels as a ConfigMap's
    labels (metav1 label validation, the same as for selectors), or the job fields in the agent
    Job the operator would render (pod template validation); dry runs, sent as raw JSON the way
    `nodesysctl.kube` sends them."""
    rest = Rest(api_client)
    dry_run = {"dryRun": "All"}
    try:
        if case.labels is not None:
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": case.id, "labels": case.labels}}  # fmt: skip
            rest.request("POST", "/api/v1/namespaces/default/configmaps", query=dry_run, body=body)
        if case.job is not None:
            order = CheckOrder("node-1", CheckReason.NEW, case.id, "boot")
            job = build_agent_job(
                policy="p", policy_uid="0", spec=parse_spec({}), order=order, settings=JobSettings()
            )
            job["metadata"]["namespace"] = "default"
            del job["metadata"]["ownerReferences"]  # the policy does not exist
            pod = job["spec"]["template"]["spec"]
            pod["tolerations"] = case.job.get("tolerations", [])
            if case.job.get("priorityClassName"):
                pod["priorityClassName"] = case.job["priorityClassName"]
            if "resources" in case.job:
                pod["containers"][0]["resources"] = case.job["resources"]
            rest.request("POST", "/apis/batch/v1/namespaces/default/jobs", query=dry_run, body=job)
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return False
    return True


def test_what_the_crd_accepts_kubernetes_accepts(
    api_client: Any, crds_installed: list[str]
) -> None:
    """The agreement cases of the unit tests (label keys and values, toleration keys and values,
    resource quantities, PriorityClass names) on the real API server: the CRD gives the verdict
    the models give, and Kubernetes' own validation of the same values agrees (the CRD refuses
    more only where it caps the agent's resources)."""
    disagreements = []
    for case in agreement_cases():
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeSysctlPolicy",
                "metadata": {"name": case.id}, "spec": case.spec}  # fmt: skip
        try:
            create_dry_run(api_client, body)
            crd_accepts = True
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            crd_accepts = False
        try:
            parse_spec(case.spec)
            models_accept = True
        except InvalidPolicy:
            models_accept = False
        verdicts = (crd_accepts, models_accept, kubernetes_accepts(api_client, case))
        if verdicts != (case.valid, case.valid, case.kubernetes_valid):
            disagreements.append((case.id, case.valid, case.kubernetes_valid, verdicts))
    assert disagreements == []
