"""Parsing `/proc/net/{tcp,tcp6,udp,udp6}` and picking sockets in reserved ranges."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

from nodesysctl.agent.sockets import (
    Socket,
    SocketKind,
    classify,
    in_ranges,
    parse_table,
    read_sockets,
)
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


NODE_PORTS = [PortRange(30000, 32767)]
PROTECTED = [PortRange(10250, 10250), PortRange(30080, 30080)]


def kinds(sockets: list[Socket]) -> list[tuple[str, int, str, SocketKind]]:
    return [
        (c.socket.proto, c.socket.port, c.socket.state, c.kind)
        for c in classify(sockets, NODE_PORTS, PROTECTED)
    ]


def test_a_protected_ports_listener_and_what_it_accepted_are_its_service() -> None:
    sockets = [
        Socket("tcp6", "::", 10250, "LISTEN"),
        # A dual-stack listener's IPv4 connection shows in tcp, or as ::ffff:... in tcp6.
        Socket("tcp", "10.0.0.5", 10250, "ESTABLISHED", "10.0.0.9", 51000),
        Socket("tcp6", "::ffff:10.0.0.5", 10250, "TIME_WAIT", "::ffff:10.0.0.9", 51001),
    ]
    assert {kind for *_, kind in kinds(sockets)} == {SocketKind.SERVICE}
    assert not any(c.surfaced for c in classify(sockets, NODE_PORTS, PROTECTED))


def test_a_listener_in_the_node_port_range_is_surfaced_not_its_connections() -> None:
    sockets = [
        Socket("tcp", "0.0.0.0", 31000, "LISTEN"),
        Socket("tcp", "10.0.0.5", 31000, "ESTABLISHED", "10.0.0.7", 40000),
        Socket("udp", "0.0.0.0", 30053, "UNCONN"),
    ]
    assert kinds(sockets) == [
        ("udp", 30053, "UNCONN", SocketKind.NODE_PORT_LISTENER),
        ("tcp", 31000, "LISTEN", SocketKind.NODE_PORT_LISTENER),
        ("tcp", 31000, "ESTABLISHED", SocketKind.SERVICE),
    ]


def test_a_connection_on_a_port_no_listener_holds_is_an_ephemeral_use() -> None:
    sockets = [
        Socket("tcp", "10.0.0.5", 30123, "ESTABLISHED", "10.96.0.1", 443),
        Socket("tcp", "10.0.0.5", 10250, "SYN_SENT", "10.0.0.8", 80),  # no kubelet listening
        Socket("udp", "10.0.0.5", 31999, "ESTABLISHED", "10.0.0.2", 53),
        # A UDP listener does not make a TCP connection on the same number its own.
        Socket("udp", "0.0.0.0", 30500, "UNCONN"),
        Socket("tcp", "10.0.0.5", 30500, "ESTABLISHED", "10.0.0.3", 22),
    ]
    assert kinds(sockets) == [
        ("udp", 30500, "UNCONN", SocketKind.NODE_PORT_LISTENER),
        ("tcp", 10250, "SYN_SENT", SocketKind.EPHEMERAL_USE),
        ("tcp", 30123, "ESTABLISHED", SocketKind.EPHEMERAL_USE),
        ("tcp", 30500, "ESTABLISHED", SocketKind.EPHEMERAL_USE),
        ("udp", 31999, "ESTABLISHED", SocketKind.EPHEMERAL_USE),
    ]


def test_a_protected_port_inside_the_node_port_range_is_protected() -> None:
    sockets = [Socket("tcp", "0.0.0.0", 30080, "LISTEN"), Socket("tcp", "0.0.0.0", 8080, "LISTEN")]
    assert kinds(sockets) == [("tcp", 30080, "LISTEN", SocketKind.SERVICE)]


def test_remote_ends_are_parsed_for_connections_only() -> None:
    local = f"{kernel_hex('10.0.0.5')}:7A3B"
    remote = f"{kernel_hex('10.96.0.1')}:01BB"
    text = HEADER + f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000 0 0 1\n"
    assert parse_table("tcp", text) == [
        Socket("tcp", "10.0.0.5", 31291, "ESTABLISHED", "10.96.0.1", 443)
    ]
