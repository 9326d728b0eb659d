"""Sockets from `/proc/net/{tcp,tcp6,udp,udp6}` whose local port lies in a reserved range, told
apart (`classify`): a protected port's own service is not a conflict; a host service listening in
the NodePort range, and a connection whose local port no listener holds (an ephemeral port taken
from a reserved range), are."""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from nodesysctl.ports import PortRange, set_contains_port

log = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "tcp6", "udp", "udp6")

# include/net/tcp_states.h
_TCP_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}
# UDP reuses the codes: 07 is an unbound-peer socket, which `ss` calls UNCONN.
_UDP_STATES = {0x01: "ESTABLISHED", 0x07: "UNCONN"}
# Sockets that hold a port for a server; reported before client connections.
_HOLDING_STATES = frozenset({"LISTEN", "UNCONN"})


@dataclass(frozen=True)
class Socket:
    proto: str
    local_address: str
    port: int
    state: str
    # The peer of a connection; empty for a socket that holds a port for a server.
    remote_address: str = ""
    remote_port: int = 0

    @property
    def holds_port(self) -> bool:
        """A listener (TCP LISTEN) or a bound, unconnected UDP socket."""
        return self.state in _HOLDING_STATES

    @property
    def transport(self) -> str:
        return "udp" if self.proto.startswith("udp") else "tcp"


class SocketKind(StrEnum):
    # A listener on a protected port, or a connection a listener accepted (its local port is
    # the listener's): the service the port is protected for. Not a conflict.
    SERVICE = "Service"
    # A listener inside the NodePort range: a host service squatting NodePorts. Surfaced.
    NODE_PORT_LISTENER = "NodePortListener"
    # A connection whose local port no listener holds: an ephemeral port the kernel handed out
    # from a reserved range (or a client bound there). A NodePort's rules can hijack its
    # replies (kubernetes#111682). Surfaced.
    EPHEMERAL_USE = "EphemeralUse"


@dataclass(frozen=True)
class Classified:
    socket: Socket
    kind: SocketKind

    @property
    def surfaced(self) -> bool:
        return self.kind is not SocketKind.SERVICE


def _address(hex_text: str) -> str:
    # The kernel prints each 32-bit word of the address in host byte order.
    raw = b"".join(
        int(hex_text[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_text), 8)
    )
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    return str(ipaddress.IPv6Address(raw))


def parse_table(proto: str, text: str) -> list[Socket]:
    """Parse one `/proc/net/<proto>` table; malformed lines are logged and skipped."""
    states = _UDP_STATES if proto.startswith("udp") else _TCP_STATES
    sockets: list[Socket] = []
    for line in text.splitlines()[1:]:  # the first line is the column header
        fields = line.split()
        if not fields:
            continue
        try:
            address_hex, port_hex = fields[1].split(":")
            remote_hex, remote_port_hex = fields[2].split(":")
            code = int(fields[3], 16)
            remote_port = int(remote_port_hex, 16)
            # 0.0.0.0:0 / [::]:0 is "no peer"; it is only parsed when there is one.
            remote = _address(remote_hex) if remote_port else ""
            sockets.append(
                Socket(
                    proto,
                    _address(address_hex),
                    int(port_hex, 16),
                    states.get(code, f"{code:02X}"),
                    remote,
                    remote_port,
                )
            )
        except (IndexError, ValueError) as exc:
            log.warning("skipping unreadable line in /proc/net/%s %r: %s", proto, line, exc)
    return sockets


def read_sockets(proc_net: Path) -> list[Socket]:
    """All sockets of the current network namespace; a missing table (no IPv6) is skipped."""
    sockets: list[Socket] = []
    for proto in PROTOCOLS:
        try:
            text = (proc_net / proto).read_text(encoding="ascii")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s", proc_net / proto, exc)
            continue
        sockets.extend(parse_table(proto, text))
    return sockets


def in_ranges(sockets: Iterable[Socket], ranges: Iterable[PortRange]) -> list[Socket]:
    """The sockets bound inside `ranges`: servers first, then by port."""
    range_list = list(ranges)
    found = [s for s in sockets if set_contains_port(range_list, s.port)]
    return sorted(
        found, key=lambda s: (s.state not in _HOLDING_STATES, s.port, s.proto, s.local_address)
    )


def classify(
    sockets: Iterable[Socket], node_ports: Sequence[PortRange], protected: Sequence[PortRange]
) -> list[Classified]:
    """The sockets bound inside `node_ports` or `protected`, each with its kind (`SocketKind`);
    in the order of `in_ranges`: servers first, then by port.

    A connection belongs to a listener when its local port is a port some socket of the same
    transport (TCP or UDP, IPv4 or IPv6) holds: the kernel never hands out a port that a bound
    socket holds as an ephemeral port, so such a connection was accepted (or, for UDP, made by
    the server itself). A protected port inside the NodePort range counts as protected.
    """
    found = in_ranges(sockets, [*node_ports, *protected])
    held = {(s.transport, s.port) for s in found if s.holds_port}
    classified = []
    for socket in found:
        if socket.holds_port:
            on_protected = set_contains_port(protected, socket.port)
            kind = SocketKind.SERVICE if on_protected else SocketKind.NODE_PORT_LISTENER
        elif (socket.transport, socket.port) in held:
            kind = SocketKind.SERVICE
        else:
            kind = SocketKind.EPHEMERAL_USE
        classified.append(Classified(socket, kind))
    return classified
