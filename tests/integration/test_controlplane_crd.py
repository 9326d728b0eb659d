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
