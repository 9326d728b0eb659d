"""Render what `make scan` scans: every overlay, and a sample agent Job.

    python manifests/scan/render.py OUT_DIR

writes OUT_DIR/overlays/<overlay>.yaml (`kubectl kustomize manifests/overlays/<overlay>`) and
OUT_DIR/agent-job/agent-job.yaml: the Job the operator creates for a policy with every option
that widens it turned on (persist -> hostPath, tolerations), rendered by the operator's own
`nodesysctl.jobs.build_agent_job`, so the scan sees exactly what would run.

kubectl is the one the control plane build made (``devcluster.binaries``), else
``kubectl`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# devcluster (for the kubectl it finds) is not installed: it lives at the repo root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def find_kubectl() -> Path | None:
    from devcluster.binaries import candidate_dirs

    for directory in candidate_dirs():
        kubectl = directory / "kubectl"
        if os.access(kubectl, os.X_OK):
            return kubectl
    found = shutil.which("kubectl")
    return Path(found) if found else None


def sample_agent_job() -> dict[str, object]:
    from nodesysctl.api import NodeSysctlPolicySpec
    from nodesysctl.jobs import JobSettings, build_agent_job
    from nodesysctl.planning import CheckOrder, CheckReason

    spec = NodeSysctlPolicySpec.model_validate(
        {
            "remediation": {"mode": "Enforce", "persist": True},
            "job": {"tolerations": [{"operator": "Exists"}]},
        }
    )
    order = CheckOrder(
        node="node-1", reason=CheckReason.NEW, job_name="nodesysctl-sample-0", boot_id="b"
    )
    return build_agent_job(
        policy="sample",
        policy_uid="00000000-0000-0000-0000-000000000000",
        spec=spec,
        order=order,
        settings=JobSettings(),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    kubectl = find_kubectl()
    if kubectl is None:
        print("no kubectl: run `make controlplane` (or put kubectl on PATH)", file=sys.stderr)
        return 1
    overlays_out = out / "overlays"
    job_out = out / "agent-job"
    for directory in (overlays_out, job_out):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    for overlay in sorted((REPO / "manifests" / "overlays").iterdir()):
        if not (overlay / "kustomization.yaml").is_file():
            continue
        rendered = subprocess.run(
            [str(kubectl), "kustomize", str(overlay)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (overlays_out / f"{overlay.name}.yaml").write_text(rendered)
        print(f"rendered {overlay.relative_to(REPO)}")
    (job_out / "agent-job.yaml").write_text(yaml.safe_dump(sample_agent_job(), sort_keys=False))
    print("rendered the sample agent Job")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
