"""Running the node agent inside real Linux network namespaces (`ip netns`)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodesysctl.agent.contract import AgentResult

PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"
TIMEOUT = 60.0


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_SYS_ADMIN"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class AgentRun:
    returncode: int
    stdout: str
    stderr: str
    result: AgentResult


@dataclass(frozen=True)
class NetNs:
    name: str

    @classmethod
    def create(cls) -> NetNs:
        netns = cls(f"nsctl-test-{uuid.uuid4().hex[:12]}")
        subprocess.run(["ip", "netns", "add", netns.name], check=True, capture_output=True)
        return netns

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def exec_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> str:
        proc = subprocess.run(
            self.exec_argv(*argv), capture_output=True, text=True, check=True, timeout=TIMEOUT
        )
        return proc.stdout

    def read(self, path: str) -> str:
        return self.run("cat", path)

    def write(self, path: str, value: str) -> None:
        # One write(2) call per kernel-sized chunk, as a shell's buffered printf does not promise:
        # a number split between two calls would be read as two ports.
        code = (
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "data = sys.argv[2].encode() + b'\\n'\n"
            "while data:\n"
            "    data = data[os.write(fd, data):]\n"
        )
        self.run(sys.executable, "-c", code, path, value)

    def run_agent(
        self,
        spec: dict[str, Any],
        *,
        sysctl_dir: Path,
        termination_log: Path,
        extra_args: Iterable[str] = (),
        read_only: Iterable[str] = (),
    ) -> AgentRun:
        """Run `python -m nodesysctl.agent` in the namespace, the way the simulated kubelet does.

        `read_only` files are bind-mounted read-only over themselves first, in a private mount
        namespace of this one run.
        """
        agent = [
            sys.executable,
            "-m",
            "nodesysctl.agent",
            "--spec-json",
            json.dumps(spec),
            "--sysctl-dir",
            str(sysctl_dir),
            "--termination-log",
            str(termination_log),
            *extra_args,
        ]
        ro = list(read_only)
        if ro:
            mounts = " && ".join(
                f"mount --bind {shlex.quote(f)} {shlex.quote(f)} && "
                f"mount -o remount,bind,ro {shlex.quote(f)}"
                for f in ro
            )
            script = f'{mounts} || exit 97; exec "$@"'
            private_mounts = ["unshare", "--mount", "--propagation", "private"]
            agent = [*private_mounts, "sh", "-c", script, "sh", *agent]
        proc = subprocess.run(
            self.exec_argv(*agent), capture_output=True, text=True, check=False, timeout=TIMEOUT
        )
        assert proc.returncode != 97, f"could not set up read-only mounts: {proc.stderr}"
        lines = proc.stdout.splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r}\n{proc.stderr}"
        result = AgentResult.parse_termination_message(lines[0])
        assert termination_log.read_text() == lines[0]
        return AgentRun(proc.returncode, proc.stdout, proc.stderr, result)
