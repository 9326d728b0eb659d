"""The source root `operator/` must never shadow the standard library's `operator` module."""

import importlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_dir_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_import_operator_from_repo_root_is_stdlib() -> None:
    # A fresh interpreter with the repo root first on sys.path, as `python -c` from the root has.
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__, operator.add(2, 3))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    path, total = out.stdout.split()
    assert total == "5"
    assert str(REPO / "operator") not in path


def test_package_imports() -> None:
    module = importlib.import_module("nodesysctl")
    assert module.GROUP == "nodesysctl.io"
