"""`python -m nodesysctl.agent`: arguments, output, termination log and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.cli import main
from nodesysctl.agent.contract import AgentResult, Status

SPEC: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Enforce",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}],
    "persist": True,
}
SPEC_TEXT = json.dumps(SPEC)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    ipv4 = tmp_path / "sys" / "net" / "ipv4"
    ipv4.mkdir(parents=True)
    (ipv4 / "ip_local_port_range").write_text("1024\t65000\n")
    (ipv4 / "ip_local_reserved_ports").write_text("\n")
    (tmp_path / "net").mkdir()
    (tmp_path / "sysctl.d").mkdir()
    return tmp_path


def args_for(tree: Path, *extra: str) -> list[str]:
    return [
        "--proc-sys",
        str(tree / "sys"),
        "--proc-net",
        str(tree / "net"),
        "--sysctl-dir",
        str(tree / "sysctl.d"),
        "--termination-log",
        str(tree / "termination-log"),
        *extra,
    ]


def run_main(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, AgentResult]:
    code = main(argv)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # exactly one line
    return code, AgentResult.parse_termination_message(out)


def test_enforce_prints_one_line_and_writes_the_termination_log(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-7")
    code, result = run_main(capsys, args_for(tree, "--spec-json", SPEC_TEXT))
    assert code == 0
    assert result.status is Status.REMEDIATED
    assert result.node == "worker-7"
    assert (tree / "termination-log").read_text() == result.to_json()


def test_spec_from_the_environment(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODESYSCTL_AGENT_SPEC", json.dumps({**SPEC, "mode": "Audit"}))
    code, result = run_main(capsys, args_for(tree))
    assert (code, result.status) == (0, Status.DRIFTED)


def test_the_argument_wins_over_the_environment(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODESYSCTL_AGENT_SPEC", "garbage")
    code, result = run_main(capsys, args_for(tree, "--spec-json", SPEC_TEXT))
    assert (code, result.status) == (0, Status.REMEDIATED)


@pytest.mark.parametrize(
    ("argv_extra", "message", "policy"),
    [
        (["--spec-json", json.dumps({**SPEC, "mode": "Yolo"})], "mode: Input", "nodeport-safe"),
        (["--spec-json", "{"], "invalid agent spec: spec: Invalid JSON", ""),
        ([], "no spec: pass --spec-json or set NODESYSCTL_AGENT_SPEC", ""),
        (["--frobnicate"], "bad arguments: unrecognized arguments: --frobnicate", ""),
    ],
)
def test_bad_input_exits_2_with_a_failed_result(
    tree: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv_extra: list[str],
    message: str,
    policy: str,
) -> None:
    monkeypatch.delenv("NODESYSCTL_AGENT_SPEC", raising=False)
    code, result = run_main(capsys, args_for(tree, *argv_extra))
    assert code == 2
    assert result.status is Status.FAILED
    assert result.mode is None
    assert result.policy == policy
    assert message in result.errors[0]
    assert AgentResult.parse_termination_message((tree / "termination-log").read_text())


def test_a_garbage_value_exits_1(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "sys" / "net" / "ipv4" / "ip_local_port_range").write_text("x y\n")
    code, result = run_main(capsys, args_for(tree, "--spec-json", SPEC_TEXT))
    assert (code, result.status) == (1, Status.FAILED)


def test_an_unwritable_termination_log_is_only_a_warning(
    tree: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = args_for(tree, "--spec-json", SPEC_TEXT)
    argv[argv.index("--termination-log") + 1] = str(tree / "missing-dir" / "log")
    code, result = run_main(capsys, argv)
    assert (code, result.status) == (0, Status.REMEDIATED)
    assert "cannot write the termination log" in caplog.text


def test_module_entry_point(tree: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nodesysctl.agent", *args_for(tree, "--spec-json", SPEC_TEXT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert AgentResult.parse_termination_message(lines[0]).status is Status.REMEDIATED
    assert "drift:" in proc.stderr  # the logs go to stderr


def test_the_agent_imports_no_kubernetes_client() -> None:
    code = (
        "import sys, nodesysctl.agent.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'kopf')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_host_root_maps_messages_to_host_paths(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysctl_dir = tree / "host" / "etc" / "sysctl.d"
    sysctl_dir.mkdir(parents=True)
    argv = args_for(tree, "--spec-json", SPEC_TEXT, "--host-root", str(tree / "host"))
    argv[argv.index("--sysctl-dir") + 1] = str(sysctl_dir)
    code, result = run_main(capsys, argv)
    assert (code, result.status) == (0, Status.REMEDIATED)
    assert result.actions[-1] == (
        "created persistence file /etc/sysctl.d/zz-nodesysctl-nodeport-safe.conf"
    )


def test_a_sysctl_dir_outside_the_host_root_exits_2(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = args_for(tree, "--spec-json", SPEC_TEXT, "--host-root", str(tree / "host"))
    code, result = run_main(capsys, argv)
    assert (code, result.status, result.policy) == (2, Status.FAILED, "nodeport-safe")
    assert result.errors == [
        f"bad arguments: --sysctl-dir {tree / 'sysctl.d'} is not inside --host-root"
    ]
    assert list((tree / "sysctl.d").iterdir()) == []
