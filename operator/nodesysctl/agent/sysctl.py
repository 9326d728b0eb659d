"""Reading and writing sysctl values under a `/proc/sys`-shaped root (the real one or a copy)."""

from __future__ import annotations

import os
from pathlib import Path

PORT_RANGE_KEY = "net.ipv4.ip_local_port_range"
RESERVED_PORTS_KEY = "net.ipv4.ip_local_reserved_ports"


class ProcSys:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("."))

    def read(self, key: str) -> str:
        return self.path(key).read_text(encoding="ascii")

    def write(self, key: str, value: str) -> None:
        """Write `value` in as few write(2) calls as the kernel takes; never creates the file."""
        data = (value + "\n").encode("ascii")
        fd = os.open(self.path(key), os.O_WRONLY | os.O_TRUNC)
        try:
            # proc handlers may take a long reserved-ports list in several chunks.
            while data:
                written = os.write(fd, data)
                data = data[written:]
        finally:
            os.close(fd)
