"""Reading and writing sysctl values under a `/proc/sys`-shaped root (the real one or a copy)."""

from __future__ import annotations

import os
from pathlib import Path

PORT_RANGE_KEY = "net.ipv4.ip_local_port_range"
RESERVED_PORTS_KEY = "net.ipv4.ip_local_reserved_ports"

# The kernel returns a whole bitmap sysctl from the first read(2) and end-of-file after it, so the
# buffer must fit the longest list (every other port reserved: about 190 KB) in one call.
READ_LIMIT = 1 << 20


class ProcSys:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("."))

    def read(self, key: str) -> str:
        path = self.path(key)
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, READ_LIMIT)
        finally:
            os.close(fd)
        if len(data) >= READ_LIMIT:
            raise ValueError(f"{path} holds more than {READ_LIMIT} bytes")
        return data.decode("ascii")

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
