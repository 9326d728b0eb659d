"""The socket census told apart, on real sockets in a fresh network namespace."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.netns_helpers import NetNs

pytestmark = pytest.mark.netns

SPEC: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Audit",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}, {"min": 10250, "max": 10250}],
    "nodePortRange": {"min": 30000, "max": 32767},
}

# Inside the namespace: a "kubelet" listening on its protected port 10250 with one connection
# it accepted; a service on 8080 (not reserved) and a client of it that bound its local port to
# 31500, inside the NodePort range, as an ephemeral port from a widened range would be.
SOCKETS = """
import socket, sys
kubelet = socket.create_server(("127.0.0.1", 10250))
to_kubelet = socket.create_connection(("127.0.0.1", 10250))
accepted, _ = kubelet.accept()
web = socket.create_server(("127.0.0.1", 8080))
client = socket.socket()
client.bind(("127.0.0.1", 31500))
client.connect(("127.0.0.1", 8080))
served, _ = web.accept()
print("ready", to_kubelet.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def sockets(netns: NetNs) -> Iterator[int]:
    """Yields the local port the connection to the kubelet got (an ordinary ephemeral port)."""
    proc = subprocess.Popen(
        netns.exec_argv(sys.executable, "-c", SOCKETS),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"the socket process failed (exit {proc.poll()})"
        yield int(line[1])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_the_kubelets_own_port_is_its_service_and_a_nodeport_client_is_surfaced(
    netns: NetNs, sockets: int, sysctl_dir: Path, termination_log: Path
) -> None:
    assert not 30000 <= sockets <= 32767  # an ordinary ephemeral port: not reserved
    assert sockets != 10250

    run = netns.run_agent(SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.returncode == 0, run.stderr
    found = [
        (s.proto, s.local_address, s.port, s.state, s.kind, s.remote_address, s.remote_port)
        for s in run.result.conflicting_sockets
    ]
    assert found == [("tcp", "127.0.0.1", 31500, "ESTABLISHED", "EphemeralUse", "127.0.0.1", 8080)]
    assert run.result.conflicting_socket_count == 1
    # The kubelet's listener and the connection it accepted: its service, not a conflict.
    assert run.result.service_socket_count == 2
