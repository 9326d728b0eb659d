"""`python -m bench.bad_inputs`: every bad input we know of and the error it really gets.

* policies: each file of tests/data/invalid-policies, sent to a real kube-apiserver
  (`kubectl apply --dry-run=server`); the answer is the API server's own;
* operator refusals: policies the API server accepts and the operator's configuration does not
  allow (`nodesysctl.admission`, with the default flags); the pass reports them Invalid;
* agent inputs: the real agent CLI (`python -m nodesysctl.agent`) on a fake /proc/sys tree,
  with bad arguments, bad specs and bad node values; its result's status, errors, exit code;
* what the operator reads back: garbage termination messages and result annotations.

Prints a Markdown table (docs/reliability.md holds its output).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from devcluster.cluster import DevCluster
from nodesysctl.admission import admit
from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings, build_agent_spec
from nodesysctl.planning import NodeResult

from .harness import REPO

GOOD_SPEC = json.loads(build_agent_spec("p", parse_spec({})).model_dump_json(by_alias=True))
RANGE = "net/ipv4/ip_local_port_range"
RESERVED = "net/ipv4/ip_local_reserved_ports"


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def policies() -> list[tuple[str, str, str]]:
    rows = []
    with DevCluster() as cluster:
        cluster.install_crds(REPO / "crds")
        for path in sorted((REPO / "tests/data/invalid-policies").glob("*.yaml")):
            what = path.read_text().splitlines()[0].lstrip("# ")
            proc = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
            answer = proc.stderr.strip() or f"ACCEPTED: {proc.stdout.strip()}"
            answer = answer.split(" is invalid: ", 1)[-1].replace(f"{REPO}/", "")
            rows.append((f"policy `{path.stem}`", what, answer))
    return rows


def operator_refusals() -> list[tuple[str, str, str]]:
    cases = {
        "job.image not in --allowed-agent-images": {"image": "evil.example/rootkit:latest"},
        "job.priorityClassName not in --allowed-priority-classes": {
            "priorityClassName": "system-node-critical"
        },
    }
    rows = []
    for what, job in cases.items():
        [problem] = admit(parse_spec({"job": job}), JobSettings())
        answer = f"policy Invalid (condition, one InvalidSpec Event), no Job created: {problem}"
        rows.append(("operator refusal", what, answer))
    return rows


def _agent(args: list[str], tree: Path) -> str:
    log = tree / "termination-log"
    log.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "nodesysctl.agent", "--proc-sys", str(tree / "proc/sys"),
            "--proc-net", str(tree / "proc/net"), "--sysctl-dir", str(tree / "sysctl.d"),
            "--termination-log", str(log), *args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    result = json.loads(log.read_text())
    errors = "; ".join(result["errors"]) or "; ".join(result["drift"] + result["actions"])
    return f"exit {proc.returncode}, {result['status']}: {errors}"


def _tree(base: Path, port_range: str = "32768\t60999", reserved: str = "") -> Path:
    tree = Path(tempfile.mkdtemp(dir=base))
    for rel, value in ((RANGE, port_range), (RESERVED, reserved)):
        path = tree / "proc/sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    net = tree / "proc/net"
    net.mkdir(parents=True)
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        (net / proto).write_text("  sl  local_address rem_address   st\n")
    (tree / "sysctl.d").mkdir()
    return tree


def agent_inputs() -> list[tuple[str, str, str]]:
    good = json.dumps(GOOD_SPEC)

    def spec(**change: object) -> list[str]:
        return ["--spec-json", json.dumps({**GOOD_SPEC, **change})]

    cases: list[tuple[str, str, list[str], dict[str, str]]] = [
        ("agent args", "no spec at all", [], {}),
        ("agent args", "an unknown argument", ["--spec-json", good, "--bogus"], {}),
        ("agent spec", "not JSON", ["--spec-json", "{"], {}),
        ("agent spec", "empty object", ["--spec-json", "{}"], {}),
        ("agent spec", "unknown mode", spec(mode="Fix"), {}),
        ("agent spec", "range min > max", spec(ephemeralRange={"min": 60999, "max": 32768}), {}),
        ("agent spec", "port 70000", spec(reservedRanges=[{"min": 70000, "max": 70000}]), {}),
        ("agent spec", "persistFile with a path", spec(persistFile="../../etc/passwd"), {}),
        ("agent spec", "an extra field", spec(extra=1), {}),
        ("node value", "range is `garbage`", ["--spec-json", good], {"range": "garbage"}),
        ("node value", "range has one number", ["--spec-json", good], {"range": "1024"}),
        ("node value", "range reversed", ["--spec-json", good], {"range": "60999\t32768"}),
        ("node value", "range beyond 65535", ["--spec-json", good], {"range": "1024\t70000"}),
        ("node value", "range file empty", ["--spec-json", good], {"range": ""}),
        ("node value", "reserved is `abc`", ["--spec-json", good], {"reserved": "abc"}),
        ("node value", "reserved `30000-`", ["--spec-json", good], {"reserved": "30000-"}),
        ("node value", "no such sysctl", ["--spec-json", good], {"missing": RANGE}),
        ("node value", "sysctl.d is a file", ["--spec-json", good], {"sysctl_d_file": "1"}),
        ("node value", "persist file not UTF-8", ["--spec-json", good], {"persist_bytes": "1"}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as base:
        for kind, what, args, node in cases:
            tree = _tree(Path(base), node.get("range", "1024\t65000"), node.get("reserved", ""))
            if "missing" in node:
                (tree / "proc/sys" / node["missing"]).unlink()
            if "sysctl_d_file" in node:
                (tree / "sysctl.d").rmdir()
                (tree / "sysctl.d").write_text("")
            if "persist_bytes" in node:
                (tree / "sysctl.d" / "zz-nodesysctl-p.conf").write_bytes(b"\xff\xfe\x00")
            rows.append((kind, what, _agent(args, tree)))
    return rows


def read_back() -> list[tuple[str, str, str]]:
    rows = []
    messages = {
        "empty termination message": "",
        "truncated JSON": '{"status": "Compl',
        "not JSON": "Segmentation fault",
        "JSON of the wrong shape": '{"status": "Fine"}',
        "JSON list": "[1, 2]",
    }
    for what, text in messages.items():
        try:
            AgentResult.parse_termination_message(text)
            answer = "accepted"
        except ValueError as exc:
            answer = f"node Failed: unreadable agent result: {exc}"
        rows.append(("termination message", what, answer))
    for what, text in {
        "result annotation not JSON": "{",
        "result annotation, unknown status": '{"status":"Odd","specHash":"x","checkedAt":"now"}',
    }.items():
        parsed = NodeResult.from_annotation(text)
        answer = "counts as never checked: the node is checked again" if parsed is None else "?"
        rows.append(("node annotation", what, answer))
    return rows


def main() -> int:
    rows = [*policies(), *operator_refusals(), *agent_inputs(), *read_back()]
    print("| # | input | bad value | what happens |")
    print("| --- | --- | --- | --- |")
    for index, (kind, what, answer) in enumerate(rows, 1):
        print(f"| {index} | {kind} | {_cell(what, 80)} | {_cell(answer)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
