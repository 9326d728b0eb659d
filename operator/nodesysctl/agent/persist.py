"""The persistence file in the host's sysctl.d directory, so values survive a reboot."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from nodesysctl.agent.sysctl import PORT_RANGE_KEY, RESERVED_PORTS_KEY
from nodesysctl.ports import PortRange, format_port_range, format_reserved_ports

HEADER = "# Managed by nodesysctl"


def render(
    policy: str, port_range: PortRange | None, reserved: tuple[PortRange, ...] | None
) -> str:
    """The exact file content; a `None` value is a setting the policy does not manage."""
    lines = [f"{HEADER} for NodeSysctlPolicy {policy}; rewritten by its node agent."]
    if port_range is not None:
        lines.append(f"{PORT_RANGE_KEY} = {format_port_range(port_range)}")
    if reserved is not None:
        lines.append(f"{RESERVED_PORTS_KEY} = {format_reserved_ports(reserved)}")
    return "\n".join(lines) + "\n"


def is_ours(path: Path) -> bool:
    """Whether `path` is a file nodesysctl wrote (its first line is our header)."""
    try:
        with path.open(encoding="utf-8") as file:
            return file.readline().startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def read_if_exists(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_atomically(path: Path, content: str) -> None:
    """Replace `path` so that a reader (or a crash) sees the old or the new file, never a mix."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            temp.write(content)
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it 0600; sysctl.d files are world-readable
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
