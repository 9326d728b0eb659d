"""Sockets from `/proc/net/{tcp,tcp6,udp,udp6}` whose local port lies in a reserved range."""

from __future__ import annotations

import ipaddress
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
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
            code = int(fields[3], 16)
            sockets.append(
                Socket(
                    proto, _address(address_hex), int(port_hex, 16), states.get(code, f"{code:02X}")
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
