"""`nodesysctl status` is a plain API client: it must not load Kopf or register its handlers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_status_never_imports_the_kopf_wiring(tmp_path: Path) -> None:
    # The real `status` path up to its first API call: without credentials it stops at
    # loading the (missing) kubeconfig, after every import it needs.
    probe = (
        "import json, sys\n"
        "from nodesysctl import cli\n"
        "try:\n"
        "    cli.main(['status'])\n"
        "except Exception as exc:\n"
        "    error = type(exc).__name__\n"
        "print(json.dumps({'error': error, 'loaded': sorted(m for m in sys.modules\n"
        "    if m == 'kopf' or m.startswith(('kopf.', 'nodesysctl.handlers')))}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO / "operator",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"error": "ConfigException", "loaded": []}
