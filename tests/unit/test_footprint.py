"""The operator process must not load the Kubernetes client's generated API classes: they build
a few hundred pydantic models at import, 27 MiB of resident memory (docs/performance.md)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_imports_no_generated_api_classes_and_few_models() -> None:
    probe = (
        "import json, sys; import nodesysctl.cli, nodesysctl.handlers; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kubernetes.client.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO / "operator",
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m.startswith("kubernetes.client.api.")] == []
    models = [m for m in loaded if m.startswith("kubernetes.client.models.")]
    assert len(models) <= 10, models  # kopf's own imports pull in a few; the API classes ~300
