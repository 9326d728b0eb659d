"""A whole agent run with the host's `/` mounted (as in the Job): the boot-order check, and the
socket census told apart, against a fake /proc and a host tree in a temp dir."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.contract import AgentResult, AgentSpec, BootOverride, Status
from nodesysctl.agent.run import AgentPaths, run_agent

RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
SPEC: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Enforce",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}, {"min": 10250, "max": 10250}],
    "nodePortRange": {"min": 30000, "max": 32767},
}
OURS = "/etc/sysctl.d/zz-nodesysctl-nodeport-safe.conf"
WIDE = f"{RANGE} = 1024 65000\n"


class Host:
    """/proc/sys, /proc/net and a host root with Debian's sysctl layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = root / "host"
        (root / "sys" / "net" / "ipv4").mkdir(parents=True)
        (root / "net").mkdir()
        (self.host / "etc" / "sysctl.d").mkdir(parents=True)
        (self.host / "usr" / "lib" / "sysctl.d").mkdir(parents=True)
        (self.host / "lib").symlink_to("usr/lib")
        (self.host / "etc" / "sysctl.conf").write_text("# nothing set here\n")
        (self.host / "etc" / "sysctl.d" / "99-sysctl.conf").symlink_to("../sysctl.conf")
        self.sysctl("ip_local_port_range", "1024\t65000\n")
        self.sysctl("ip_local_reserved_ports", "\n")

    def sysctl(self, name: str, text: str | None = None) -> str:
        path = self.root / "sys" / "net" / "ipv4" / name
        if text is not None:
            path.write_text(text)
        return path.read_text()

    def file(self, host_path: str, text: str | None = None) -> Path:
        path = self.host / host_path.lstrip("/")
        if text is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path

    def run(self, **changes: Any) -> AgentResult:
        spec = AgentSpec.model_validate({**SPEC, **changes})
        paths = AgentPaths(
            self.root / "sys", self.root / "net", self.host / "etc" / "sysctl.d", self.host
        )
        return run_agent(spec, paths, node="worker-1")


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_a_file_after_ours_that_widens_the_range_leaves_the_node_drifted(host: Host) -> None:
    tuning = host.file("/etc/sysctl.d/zzz-tuning.conf", WIDE)
    result = host.run()
    # The live values are fixed and ours is written...
    assert host.sysctl("ip_local_port_range") == "32768 60999\n"
    assert host.file(OURS).exists()
    assert [a.split(" ")[0] for a in result.actions] == ["wrote", "wrote", "created"]
    # ...but at boot zzz-tuning.conf would undo it, and it is not the agent's to edit.
    assert result.status is Status.DRIFTED
    assert result.boot_overrides == [
        BootOverride(file="/etc/sysctl.d/zzz-tuning.conf", key=RANGE, value="1024 65000")
    ]
    assert result.boot_override_count == 1
    assert result.drift[-1] == (
        f"/etc/sysctl.d/zzz-tuning.conf sets {RANGE} = 1024 65000, read after {OURS} at boot: "
        "it would undo the fix at every boot (PersistOverridden)"
    )
    assert tuning.read_text() == WIDE
    assert result.errors == []
    assert result.exit_code == 0

    again = host.run()
    assert again.status is Status.DRIFTED
    assert again.actions == []
    assert again.drift == result.drift[-1:]


def test_the_same_line_in_a_file_before_ours_is_not_an_override(host: Host) -> None:
    host.file("/etc/sysctl.d/50-tuning.conf", WIDE)
    host.file("/etc/sysctl.conf", WIDE)  # read through 99-sysctl.conf: before ours too
    result = host.run()
    assert result.status is Status.REMEDIATED
    assert result.boot_overrides == []
    assert result.warnings == []
    assert host.run().status is Status.COMPLIANT
    assert "bootOverrides" not in host.run().to_json()


def test_an_override_in_run_or_usr_lib_counts_too(host: Host) -> None:
    host.file("/usr/lib/sysctl.d/zzz-vendor.conf", f"{RESERVED} = 8080\n")
    result = host.run()
    assert result.status is Status.DRIFTED
    assert result.boot_overrides == [
        BootOverride(file="/usr/lib/sysctl.d/zzz-vendor.conf", key=RESERVED, value="8080")
    ]
    # The admin masks it in /etc: the fix survives boot.
    (host.host / "etc" / "sysctl.d" / "zzz-vendor.conf").symlink_to("/dev/null")
    assert host.run().status is Status.COMPLIANT


def test_audit_reports_overrides_without_counting_them_as_drift(host: Host) -> None:
    host.sysctl("ip_local_port_range", "32768\t60999\n")
    host.sysctl("ip_local_reserved_ports", "10250,30000-32767\n")
    host.file("/etc/sysctl.d/zzz-tuning.conf", WIDE)
    result = host.run(mode="Audit")
    assert result.status is Status.COMPLIANT
    assert result.drift == []
    assert [o.file for o in result.boot_overrides] == ["/etc/sysctl.d/zzz-tuning.conf"]


def test_only_managed_keys_are_judged_and_nothing_without_persist(host: Host) -> None:
    host.file("/etc/sysctl.d/zzz-tuning.conf", WIDE)
    assert host.run(narrowRange=False).boot_overrides == []
    result = host.run(persist=False)
    assert result.boot_overrides == []
    assert result.warnings == []
    assert result.status is Status.REMEDIATED  # the range, which narrowRange=False left


def test_a_sysctl_dir_outside_the_search_path_is_a_warning(host: Host, tmp_path: Path) -> None:
    (host.host / "opt" / "sysctl").mkdir(parents=True)
    spec = AgentSpec.model_validate(SPEC)
    paths = AgentPaths(
        host.root / "sys", host.root / "net", host.host / "opt" / "sysctl", host.host
    )
    result = run_agent(spec, paths)
    assert result.status is Status.REMEDIATED
    assert result.warnings == [
        "boot order not checked: /opt/sysctl is not in the systemd-sysctl search path "
        "(/etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, "
        "/lib/sysctl.d), so systemd-sysctl does not apply "
        "/opt/sysctl/zz-nodesysctl-nodeport-safe.conf at boot"
    ]


def test_an_unreadable_file_after_ours_is_a_warning_not_drift(host: Host) -> None:
    (host.host / "etc" / "sysctl.d" / "zzz-x.conf").symlink_to("/proc/self/environ")
    result = host.run()
    assert result.status is Status.REMEDIATED
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(
        f"cannot tell whether /etc/sysctl.d/zzz-x.conf changes {RANGE} or {RESERVED} at boot: "
    )


# --- sockets ------------------------------------------------------------------------------------

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"


def hex_address(address: str) -> str:
    packed = ipaddress.ip_address(address).packed
    words = (packed[i : i + 4] for i in range(0, len(packed), 4))
    return "".join(f"{int.from_bytes(w, sys.byteorder):08X}" for w in words)


def row(local: str, port: int, remote: str, remote_port: int, state: int) -> str:
    return (
        f"   0: {hex_address(local)}:{port:04X} {hex_address(remote)}:{remote_port:04X} "
        f"{state:02X} 00000000:00000000 00:00000000 00000000 0 0 1"
    )


def test_sockets_are_told_apart(host: Host) -> None:
    tcp = [
        row("0.0.0.0", 10250, "0.0.0.0", 0, 0x0A),  # the kubelet: its protected port
        row("10.0.0.5", 10250, "10.0.0.9", 51000, 0x01),  # a connection it accepted
        row("0.0.0.0", 31000, "0.0.0.0", 0, 0x0A),  # a host service on a NodePort
        row("10.0.0.5", 31000, "10.0.0.7", 40000, 0x01),  # accepted by that service
        row("10.0.0.5", 30123, "10.96.0.1", 443, 0x01),  # outgoing, local port a NodePort
        row("10.0.0.5", 8080, "10.0.0.7", 40001, 0x01),  # not a reserved port at all
    ]
    (host.root / "net" / "tcp").write_text(HEADER + "\n".join(tcp) + "\n")
    udp = [row("0.0.0.0", 10250, "10.0.0.7", 5353, 0x01)]  # outgoing on a protected port
    (host.root / "net" / "udp").write_text(HEADER + "\n".join(udp) + "\n")
    result = host.run()
    got = [
        (s.proto, s.port, s.state, s.kind, s.remote_address, s.remote_port)
        for s in result.conflicting_sockets
    ]
    assert got == [
        ("tcp", 31000, "LISTEN", "NodePortListener", "", 0),
        ("udp", 10250, "ESTABLISHED", "EphemeralUse", "10.0.0.7", 5353),
        ("tcp", 30123, "ESTABLISHED", "EphemeralUse", "10.96.0.1", 443),
    ]
    assert result.conflicting_socket_count == 3
    assert result.service_socket_count == 3  # the kubelet, its connection, the squatter's


def test_without_a_node_port_range_multi_port_ranges_are_node_ports(host: Host) -> None:
    # An operator that predates nodePortRange: the NodePort range is the one long range.
    tcp = [row("0.0.0.0", 10250, "0.0.0.0", 0, 0x0A), row("0.0.0.0", 31000, "0.0.0.0", 0, 0x0A)]
    (host.root / "net" / "tcp").write_text(HEADER + "\n".join(tcp) + "\n")
    spec = {k: v for k, v in SPEC.items() if k != "nodePortRange"}
    result = run_agent(
        AgentSpec.model_validate(spec),
        AgentPaths(host.root / "sys", host.root / "net", host.host / "etc" / "sysctl.d", host.host),
    )
    assert [(s.port, s.kind) for s in result.conflicting_sockets] == [(31000, "NodePortListener")]
    assert result.service_socket_count == 1


def test_a_file_name_that_is_not_utf8_is_named_escaped_and_the_result_still_serializes(
    host: Host,
) -> None:
    directory = os.fsencode(host.host / "etc" / "sysctl.d")
    with open(os.path.join(directory, b"zzz-\xff.conf"), "w") as f:
        f.write(WIDE)
    result = host.run()
    assert result.status is Status.DRIFTED
    assert [o.file for o in result.boot_overrides] == ["/etc/sysctl.d/zzz-\\udcff.conf"]
    text = result.to_json()
    assert AgentResult.parse_termination_message(text).boot_overrides == result.boot_overrides
