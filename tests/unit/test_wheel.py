"""The operator's wheel, and so its image, holds the operator and the agent and nothing else.

The dev cluster, the tests and the benchmarks live beside `operator/`; they must not creep back
into the package (the dev cluster runs pod commands as host processes, its pytest plugin needs
pytest, which the product does not install). The wheel is built as the Dockerfile builds it,
from `pyproject.toml` and `operator/` only, with the pinned build backend that the dev extras
install (`--no-build-isolation --no-index`: no network, about a second)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
DIST_INFO = f"{PROJECT['name']}-{PROJECT['version']}.dist-info/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(REPO / "pyproject.toml", src)
    # The editable install's egg-info and bytecode are local leftovers, not sources.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "operator", src / "operator", ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_dev_extras_pin_the_build_backend() -> None:
    # Else the wheel tested here would come from another setuptools than the image's.
    backend = set(PYPROJECT["build-system"]["requires"])
    assert backend <= set(PROJECT["optional-dependencies"]["dev"])


def test_the_image_builds_from_the_lock_pyproject_and_operator_only() -> None:
    text = (REPO / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies == [["requirements.lock", "pyproject.toml"], ["operator"]]


def test_the_wheel_holds_only_the_nodesysctl_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert [n for n in names if not n.startswith(("nodesysctl/", DIST_INFO))] == []
    assert [n for n in names if "devcluster" in n or "pytest" in n] == []
    assert [n for n in names if n.split("/")[0] in ("tests", "bench", "operator")] == []


def test_the_wheel_holds_the_operator_and_the_agent(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sources = {
        p.relative_to(REPO / "operator").as_posix()
        for p in (REPO / "operator" / "nodesysctl").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources - names == set()
    for module in ("cli.py", "handlers.py", "reconcile.py", "agent/__main__.py", "agent/run.py"):
        assert f"nodesysctl/{module}" in names
    assert "nodesysctl/py.typed" in names
    entry_points = wheel.read(DIST_INFO + "entry_points.txt").decode()
    assert "nodesysctl = nodesysctl.cli:main" in entry_points


# Imports every module of the unpacked wheel with pytest unimportable, as in the image.
# `__main__` modules are skipped: importing one runs it (the agent's imports only agent.cli).
IMPORT_ALL = """
import importlib, json, pkgutil, sys
sys.modules["pytest"] = sys.modules["_pytest"] = None
sys.path.insert(0, sys.argv[1])
import nodesysctl
assert nodesysctl.__file__.startswith(sys.argv[1]), nodesysctl.__file__
names = [m.name for m in pkgutil.walk_packages(nodesysctl.__path__, "nodesysctl.")
         if not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
print(json.dumps(names))
"""


def test_every_shipped_module_imports_without_pytest(
    wheel: zipfile.ZipFile, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    wheel.extractall(site)  # a pure-Python wheel installs by unpacking
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, str(site)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    imported = json.loads(out.stdout)
    assert {"nodesysctl.cli", "nodesysctl.handlers", "nodesysctl.agent.cli"} <= set(imported)
