"""The node agent against real kernels: each test gets its own network namespace.

The port sysctls are per network namespace, so a namespace is a faithful, disposable node.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.contract import Status
from tests.node.netns_helpers import PORT_RANGE, RESERVED_PORTS, NetNs, wait_for

pytestmark = pytest.mark.netns

SPEC: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Enforce",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}, {"min": 10250, "max": 10250}],
    "narrowRange": True,
    "reservePorts": True,
    "persist": True,
    "persistFile": "zz-nodesysctl-nodeport-safe.conf",
}
EXPECTED_FILE = (
    "# Managed by nodesysctl for NodeSysctlPolicy nodeport-safe; rewritten by its node agent.\n"
    "net.ipv4.ip_local_port_range = 32768 60999\n"
    "net.ipv4.ip_local_reserved_ports = 10250,30000-32767\n"
)


def host_value(path: str) -> str:
    return Path(path).read_text()


def test_a_drifted_namespace_is_corrected(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    host_before = host_value(PORT_RANGE), host_value(RESERVED_PORTS)
    netns.write(PORT_RANGE, "1024 65000")
    assert netns.read(PORT_RANGE) == "1024\t65000\n"

    run = netns.run_agent(SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.returncode == 0, run.stderr
    assert run.result.status is Status.REMEDIATED
    assert netns.read(PORT_RANGE) == "32768\t60999\n"
    assert netns.read(RESERVED_PORTS) == "10250,30000-32767\n"
    assert (sysctl_dir / SPEC["persistFile"]).read_text() == EXPECTED_FILE
    after = run.result.after
    assert after.ip_local_port_range is not None
    assert (after.ip_local_port_range.min, after.ip_local_port_range.max) == (32768, 60999)
    assert after.persisted
    # The namespace really isolated the change from the machine running the tests.
    assert (host_value(PORT_RANGE), host_value(RESERVED_PORTS)) == host_before


def test_existing_reserved_ports_are_merged_not_replaced(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    netns.write(RESERVED_PORTS, "8080,9000-9010")

    run = netns.run_agent(SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.result.status is Status.REMEDIATED, run.stderr
    assert netns.read(RESERVED_PORTS) == "8080,9000-9010,10250,30000-32767\n"
    assert run.result.before.ip_local_reserved_ports == "8080,9000-9010"
    assert run.result.after.ip_local_reserved_ports == "8080,9000-9010,10250,30000-32767"


def test_a_long_reserved_list_is_read_and_merged_intact(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    # Longer than a page and than Python's default read buffer: the kernel answers only the
    # first read(2) of a bitmap sysctl, and takes long writes in several chunks.
    every_other = ",".join(str(port) for port in range(40000, 44000, 2))
    netns.write(RESERVED_PORTS, every_other)
    assert netns.read(RESERVED_PORTS) == every_other + "\n"

    run = netns.run_agent(SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.result.status is Status.REMEDIATED, run.result.errors
    merged = f"10250,30000-32767,{every_other}"
    assert netns.read(RESERVED_PORTS) == merged + "\n"
    assert f"net.ipv4.ip_local_reserved_ports = {merged}\n" in (
        (sysctl_dir / SPEC["persistFile"]).read_text()
    )
    # The result stays within the termination message limit; the list in it is cut.
    assert len(termination_log.read_bytes()) <= 4000
    assert run.result.after.ip_local_reserved_ports is not None
    assert run.result.after.ip_local_reserved_ports.endswith("…")


def test_audit_mode_changes_nothing(netns: NetNs, sysctl_dir: Path, termination_log: Path) -> None:
    netns.write(PORT_RANGE, "1024 65000")
    netns.write(RESERVED_PORTS, "8080")

    run = netns.run_agent(
        {**SPEC, "mode": "Audit"}, sysctl_dir=sysctl_dir, termination_log=termination_log
    )

    assert run.returncode == 0, run.stderr
    assert run.result.status is Status.DRIFTED
    assert len(run.result.drift) == 2
    assert run.result.actions == []
    assert netns.read(PORT_RANGE) == "1024\t65000\n"
    assert netns.read(RESERVED_PORTS) == "8080\n"
    assert list(sysctl_dir.iterdir()) == []


def test_a_compliant_namespace_is_left_untouched(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    netns.write(RESERVED_PORTS, "10250,30000-32767")
    persist_file = sysctl_dir / SPEC["persistFile"]
    persist_file.write_text(EXPECTED_FILE)
    stat_before = persist_file.stat()

    # Both sysctls and the persistence file are read-only for this run: any write would fail.
    run = netns.run_agent(
        SPEC,
        sysctl_dir=sysctl_dir,
        termination_log=termination_log,
        read_only=[PORT_RANGE, RESERVED_PORTS, str(persist_file)],
    )

    assert run.returncode == 0, run.stderr
    assert run.result.status is Status.COMPLIANT
    assert (run.result.drift, run.result.actions, run.result.errors) == ([], [], [])
    stat_after = persist_file.stat()
    assert (stat_after.st_mtime_ns, stat_after.st_ino) == (
        stat_before.st_mtime_ns,
        stat_before.st_ino,
    )
    assert netns.read(PORT_RANGE) == "32768\t60999\n"


@pytest.fixture
def nodeport_listener(netns: NetNs) -> Iterator[int]:
    """A process in the namespace holding TCP 31000 (LISTEN) and UDP 31001; yields its pid."""
    code = (
        "import socket, sys\n"
        "tcp = socket.socket()\n"
        "tcp.bind(('0.0.0.0', 31000))\n"
        "tcp.listen()\n"
        "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "udp.bind(('0.0.0.0', 31001))\n"
        "sys.stdin.read()\n"
    )
    # `ip netns exec` execs the command, so the pid is the listener's own.
    proc = subprocess.Popen(netns.exec_argv(sys.executable, "-c", code), stdin=subprocess.PIPE)
    host_ns = os.readlink("/proc/self/ns/net")

    def bound() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"listener exited with {proc.returncode}")
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") == host_ns:
                return False  # still `ip`, not yet in the namespace
            tcp = Path(f"/proc/{proc.pid}/net/tcp").read_text()
            udp = Path(f"/proc/{proc.pid}/net/udp").read_text()
        except FileNotFoundError:
            return False
        return ":7918 00000000:0000 0A" in tcp and ":7919 " in udp  # 31000, 31001 in hex

    try:
        wait_for(bound, "the listener to bind 31000/tcp and 31001/udp")
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_a_socket_in_the_nodeport_range_is_reported(
    netns: NetNs, nodeport_listener: int, sysctl_dir: Path, termination_log: Path
) -> None:
    run = netns.run_agent(
        {**SPEC, "mode": "Audit"}, sysctl_dir=sysctl_dir, termination_log=termination_log
    )

    assert run.returncode == 0, run.stderr
    sockets = {(s.proto, s.local_address, s.port, s.state) for s in run.result.conflicting_sockets}
    assert sockets == {("tcp", "0.0.0.0", 31000, "LISTEN"), ("udp", "0.0.0.0", 31001, "UNCONN")}
    assert run.result.conflicting_socket_count == 2


def test_a_read_only_reserved_ports_value_fails_with_no_write_at_all(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    netns.write(PORT_RANGE, "1024 65000")

    run = netns.run_agent(
        SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log, read_only=[RESERVED_PORTS]
    )

    assert run.returncode == 1
    assert run.result.status is Status.FAILED
    assert run.result.actions == []
    assert run.result.errors[0].startswith(
        "failed to write net.ipv4.ip_local_reserved_ports = 10250,30000-32767 (was (none)): "
        "Read-only file system"
    )
    assert run.result.errors[1].startswith(
        "not done after the failure: write net.ipv4.ip_local_port_range = 32768 60999"
    )
    assert netns.read(PORT_RANGE) == "1024\t65000\n"
    assert netns.read(RESERVED_PORTS) == "\n"
    assert list(sysctl_dir.iterdir()) == []


def test_a_read_only_range_stops_after_the_ports_are_reserved(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    netns.write(PORT_RANGE, "1024 65000")

    run = netns.run_agent(
        SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log, read_only=[PORT_RANGE]
    )

    assert run.returncode == 1
    assert run.result.status is Status.FAILED
    # Reserving first leaves the node protected even though the range could not be narrowed.
    assert netns.read(RESERVED_PORTS) == "10250,30000-32767\n"
    assert netns.read(PORT_RANGE) == "1024\t65000\n"
    assert "Read-only file system" in run.result.errors[0]
    assert run.result.errors[1].startswith("not done after the failure: create persistence file")
    assert list(sysctl_dir.iterdir()) == []


def test_a_range_the_kernel_rejects_is_reported(
    netns: NetNs, sysctl_dir: Path, termination_log: Path
) -> None:
    # The kernel refuses a range that starts below net.ipv4.ip_unprivileged_port_start (1024).
    spec = {**SPEC, "ephemeralRange": {"min": 500, "max": 60999}, "reservePorts": False}
    netns.write(PORT_RANGE, "1024 65000")

    run = netns.run_agent(spec, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.result.status is Status.FAILED
    assert "failed to write net.ipv4.ip_local_port_range = 500 60999" in run.result.errors[0]
    assert "Invalid argument" in run.result.errors[0]
    assert netns.read(PORT_RANGE) == "1024\t65000\n"
    assert list(sysctl_dir.iterdir()) == []


def test_a_garbage_value_fails_with_no_write(
    netns: NetNs, tmp_path: Path, sysctl_dir: Path, termination_log: Path
) -> None:
    # The kernel never holds garbage, so the agent reads a copy of the tree that does.
    fake_sys = tmp_path / "proc-sys"
    (fake_sys / "net" / "ipv4").mkdir(parents=True)
    (fake_sys / "net" / "ipv4" / "ip_local_port_range").write_text("1024 banana\n")
    (fake_sys / "net" / "ipv4" / "ip_local_reserved_ports").write_text("8080\n")
    files = sorted(fake_sys.rglob("*"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()}

    run = netns.run_agent(
        SPEC,
        sysctl_dir=sysctl_dir,
        termination_log=termination_log,
        extra_args=["--proc-sys", str(fake_sys)],
    )

    assert run.returncode == 1
    assert run.result.status is Status.FAILED
    assert run.result.errors == [
        "cannot read net.ipv4.ip_local_port_range: cannot parse '1024 banana\\n': "
        "'banana' is not a port number"
    ]
    assert run.result.actions == []
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.is_file()} == before
    assert list(sysctl_dir.iterdir()) == []
    assert netns.read(RESERVED_PORTS) == "\n"  # the real values were not touched either


def test_a_symlink_at_the_persistence_name_is_refused_and_its_target_untouched(
    netns: NetNs, tmp_path: Path, sysctl_dir: Path, termination_log: Path
) -> None:
    # Someone who can create names in the host's sysctl.d plants the agent's file name as a
    # link to a file elsewhere: the root agent must not write through it, and changes nothing.
    outside = tmp_path / "precious.conf"
    outside.write_text("kernel.panic = 10\n")
    stat_before = outside.stat()
    link = sysctl_dir / SPEC["persistFile"]
    link.symlink_to(outside)
    netns.write(PORT_RANGE, "1024 65000")

    run = netns.run_agent(SPEC, sysctl_dir=sysctl_dir, termination_log=termination_log)

    assert run.returncode == 1, run.stderr
    assert run.result.status is Status.FAILED
    assert run.result.actions == []
    assert run.result.errors[0].startswith(
        f"cannot replace persistence file {link}: Is a symbolic link: not replaced"
    )
    assert outside.read_text() == "kernel.panic = 10\n"
    assert outside.stat().st_mtime_ns == stat_before.st_mtime_ns
    assert os.readlink(link) == str(outside)
    assert list(sysctl_dir.iterdir()) == [link]
    # Refused before any sysctl was written.
    assert netns.read(PORT_RANGE) == "1024\t65000\n"
    assert netns.read(RESERVED_PORTS) == "\n"
