"""The two builds of the one image cannot drift: the Dockerfile (for users with Docker) and
`make image` (devcluster/images.py, what the dev cluster's real nodes run) declare the same
entrypoint, command, user, ports, environment and venv, and both install exactly
requirements.lock with --require-hashes, which pins what pyproject.toml pins. (The built image's
installed packages are compared with the lock on a real node: tests/realnode.) The one allowed
difference is the base and so the interpreter's path."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from devcluster import images

REPO = Path(__file__).resolve().parents[2]


def final_stage() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def lock_pins() -> dict[str, str]:
    text = images.LOCK.read_text()
    return {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.MULTILINE)
    }


def test_entrypoint_command_user_and_ports_agree() -> None:
    stage = final_stage()
    assert ("ENTRYPOINT", json.dumps(list(images.ENTRYPOINT))) in stage
    assert ("CMD", json.dumps(list(images.CMD))) in stage
    assert [rest for keyword, rest in stage if keyword == "USER"] == [images.USER]
    exposed = [f"{rest}/tcp" for keyword, rest in stage if keyword == "EXPOSE"]
    assert exposed == list(images.EXPOSED_PORTS)


def test_environment_and_venv_agree() -> None:
    docker = dockerfile_env()
    ours = dict(pair.split("=", 1) for pair in images.ENV)
    assert docker["PATH"] == f"{images.VENV}/bin:$PATH"
    assert ours["PATH"].startswith(f"{images.VENV}/bin:")
    assert {k: v for k, v in docker.items() if k != "PATH"} == {
        k: v for k, v in ours.items() if k != "PATH"
    }
    runs = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert f"python -m venv {images.VENV}" in runs


def test_both_install_the_hashed_lock() -> None:
    runs = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert "--require-hashes -r /requirements.lock" in runs
    assert "--no-deps /wheels/nodesysctl-" in runs
    assert images.LOCK == REPO / "requirements.lock"
    assert "--require-hashes" in Path(images.__file__).read_text()


def test_the_lock_pins_what_pyproject_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        assert pins.get(name.lower().replace("_", "-")) == version, requirement
    assert "nodesysctl" not in pins  # the project's own wheel is installed after the lock
    hashes = re.findall(r"--hash=sha256:[0-9a-f]{64}", images.LOCK.read_text())
    assert len(hashes) == len(pins)


def test_local_image_names_never_name_a_registry_host() -> None:
    # Kubernetes would pull a name with a registry host; localhost/ names only exist locally.
    assert images.NODESYSCTL_NAME.startswith("localhost/")
    assert images.PAUSE_NAME.startswith("localhost/")
