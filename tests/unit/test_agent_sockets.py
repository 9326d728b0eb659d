"""Parsing `/proc/net/{tcp,tcp6,udp,udp6}` and picking sockets in reserved ranges."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

from nodesysctl.agent.sockets import Socket, in_ranges, parse_table, read_sockets
from nodesysctl.ports import PortRange

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def kernel_hex(address: str) -> str:
    """An address the way the kernel prints it: each 32-bit word in host byte order."""
    packed = ipaddress.ip_address(address).packed
    words = (packed[i : i + 4] for i in range(0, len(packed), 4))
    return "".join(f"{int.from_bytes(word, sys.byteorder):08X}" for word in words)


def line(slot: int, address: str, port: int, state: int) -> str:
    local = f"{kernel_hex(address)}:{port:04X}"
    remote = f"{kernel_hex('0.0.0.0' if ':' not in address else '::')}:0000"
    return f"{slot:4}: {local} {remote} {state:02X} 00000000:00000000 00:00000000 00000000  0 0 1"


def test_parse_tcp_ipv4() -> None:
    text = HEADER + line(0, "127.0.0.1", 31000, 0x0A) + "\n" + line(1, "10.1.2.3", 443, 0x01)
    assert parse_table("tcp", text) == [
        Socket("tcp", "127.0.0.1", 31000, "LISTEN"),
        Socket("tcp", "10.1.2.3", 443, "ESTABLISHED"),
    ]


def test_parse_ipv6_and_udp_states() -> None:
    assert parse_table("tcp6", HEADER + line(0, "::1", 30001, 0x06)) == [
        Socket("tcp6", "::1", 30001, "TIME_WAIT")
    ]
    text = HEADER + line(0, "fd00::1", 30002, 0x07) + "\n" + line(1, "::", 30003, 0x01)
    assert parse_table("udp6", text) == [
        Socket("udp6", "fd00::1", 30002, "UNCONN"),
        Socket("udp6", "::", 30003, "ESTABLISHED"),
    ]


def test_unknown_state_is_shown_as_its_code() -> None:
    assert parse_table("udp", HEADER + line(0, "0.0.0.0", 30000, 0x0A))[0].state == "0A"


def test_malformed_lines_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    text = HEADER + "   0: garbage\n\n" + line(1, "0.0.0.0", 30000, 0x0A) + "\n   2: ZZ:1 x 0A\n"
    assert parse_table("tcp", text) == [Socket("tcp", "0.0.0.0", 30000, "LISTEN")]
    assert caplog.text.count("skipping unreadable line") == 2


def test_read_sockets_tolerates_missing_tables(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(HEADER + line(0, "0.0.0.0", 31000, 0x0A) + "\n")
    (tmp_path / "udp").write_text(HEADER)
    assert read_sockets(tmp_path) == [Socket("tcp", "0.0.0.0", 31000, "LISTEN")]
    assert read_sockets(tmp_path / "missing") == []


def test_in_ranges_lists_servers_first_then_by_port() -> None:
    sockets = [
        Socket("tcp", "10.0.0.1", 30500, "ESTABLISHED"),
        Socket("tcp", "0.0.0.0", 8080, "LISTEN"),
        Socket("udp", "0.0.0.0", 32000, "UNCONN"),
        Socket("tcp6", "::", 31000, "LISTEN"),
        Socket("tcp", "10.0.0.1", 10250, "ESTABLISHED"),
    ]
    found = in_ranges(sockets, [PortRange(30000, 32767), PortRange(10250, 10250)])
    assert [(s.port, s.state) for s in found] == [
        (31000, "LISTEN"),
        (32000, "UNCONN"),
        (10250, "ESTABLISHED"),
        (30500, "ESTABLISHED"),
    ]


def test_reads_this_machines_real_tables(caplog: pytest.LogCaptureFixture) -> None:
    # Whatever is on this machine must parse without a skipped line.
    for socket in read_sockets(Path("/proc/net")):
        assert 0 <= socket.port <= 65535
        ipaddress.ip_address(socket.local_address)
    assert "skipping" not in caplog.text
