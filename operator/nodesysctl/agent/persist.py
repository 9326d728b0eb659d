"""The persistence file in the host's sysctl.d directory, so values survive a reboot.

The file operations themselves are `nodesysctl.agent.hostfs`: the directory is the host's.
"""

from __future__ import annotations

import logging

from nodesysctl.agent.hostfs import FileKind, HostDir, HostFileError
from nodesysctl.agent.sysctl import PORT_RANGE_KEY, RESERVED_PORTS_KEY
from nodesysctl.ports import PortRange, format_port_range, format_reserved_ports

HEADER = "# Managed by nodesysctl"

log = logging.getLogger(__name__)


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


def is_ours(files: HostDir, name: str) -> bool:
    """Whether `name` is a file nodesysctl wrote: a regular file whose first line is our header.

    The agent only ever writes regular files, so a link by that name is not ours even when its
    target is: removing it would be removing something an admin put there.
    """
    try:
        kind = files.kind(name)
        if kind is not FileKind.REGULAR:
            if kind is not FileKind.MISSING:
                log.info("%s is %s, not a file nodesysctl wrote", files.host_path_of(name), kind)
            return False
        found = files.read(name)
    except (OSError, HostFileError) as exc:
        log.warning("cannot read %s: %s", files.host_path_of(name), exc)
        return False
    return found.content is not None and found.content.startswith(HEADER)
