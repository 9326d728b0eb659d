"""The persistence file in the host's sysctl.d directory, so values survive a reboot.

Spec version 1 (earlier operators): one file per policy, `zz-nodesysctl-<policy>.conf`.
Version 2: one file per node, `zz-nodesysctl.conf`, with the composed values of every policy
that selects the node and a line recording which values nodesysctl set itself (`Provenance`).
The file operations themselves are `nodesysctl.agent.hostfs`: the directory is the host's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nodesysctl.agent.bootfiles import MAX_DIR_ENTRIES
from nodesysctl.agent.contract import PER_POLICY_FILE
from nodesysctl.agent.hostfs import FileKind, HostDir, HostFileError
from nodesysctl.agent.sysctl import PORT_RANGE_KEY, RESERVED_PORTS_KEY
from nodesysctl.ports import (
    PortRange,
    PortSet,
    format_port_range,
    format_reserved_ports,
    intersect_ranges,
    merge_ranges,
    parse_port_range,
    parse_reserved_ports,
    subtract_ranges,
)

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


# --- the composed file (spec version 2): one per node, for every policy that selects it ------

PROVENANCE_PREFIX = "# Set by nodesysctl, not the node's own: "
_PROVENANCE = re.compile(
    "^" + re.escape(PROVENANCE_PREFIX) + r"port range (?P<ranges>[^;]+); "
    r"reserved ports (?P<reserved>.+)$"
)


@dataclass(frozen=True)
class Provenance:
    """Which of the node's running values nodesysctl put there itself, recorded in the file.

    The kernel keeps a value until the next reboot whoever set it, and a written reserved-ports
    list replaces the whole list at boot. So when a policy leaves a node (deleted, or its range
    widened), the agent must tell the values the remaining policies want from the ones it set
    for the one that left, and both from the node's own (an admin's reserved 8080): only the
    file knows. `ranges`: port ranges nodesysctl wrote (the kernel may still hold one);
    `reserved`: ports nodesysctl added to the reserved list (the kernel may still hold them).
    """

    ranges: tuple[PortRange, ...] = ()
    reserved: PortSet = ()

    def render(self) -> str:
        ranges = " ".join(f"{r.lo}-{r.hi}" for r in self.ranges)
        reserved = format_reserved_ports(self.reserved)
        return (
            f"{PROVENANCE_PREFIX}port range {ranges or 'none'}; reserved ports {reserved or 'none'}"
        )

    @classmethod
    def parse(cls, content: str | None) -> Provenance:
        """From a file's content; nothing (everything counts as the node's own, so nothing is
        ever dropped) when there is no file of ours or its line is unreadable."""
        if not content or not content.startswith(HEADER):
            return cls()
        for line in content.splitlines():
            found = _PROVENANCE.match(line)
            if found is None:
                continue
            try:
                ranges = tuple(
                    _parse_range(item) for item in found["ranges"].split() if item != "none"
                )
                reserved_text = found["reserved"].strip()
                reserved = () if reserved_text == "none" else parse_reserved_ports(reserved_text)
            except ValueError:
                return cls()
            return cls(ranges, reserved)
        return cls()


def same_values(existing: str | None, expected: str) -> bool:
    """Whether a composed file already holds `expected`, its `Provenance` line aside: that
    record shrinks on its own (a reboot drops what nodesysctl had set), which is no reason to
    rewrite the file; it is brought up to date whenever the values are."""
    if existing is None:
        return False
    return _values(existing) == _values(expected)


def _values(content: str) -> list[str]:
    return [line for line in content.splitlines() if not line.startswith(PROVENANCE_PREFIX)]


def _parse_range(text: str) -> PortRange:
    lo, _, hi = text.partition("-")
    return parse_port_range(f"{lo} {hi or lo}")


@dataclass(frozen=True)
class KernelValues:
    """The two sysctls before and after a run (after = before when nothing was written)."""

    range_before: PortRange
    range_after: PortRange
    reserved_before: PortSet
    reserved_after: PortSet


def render_composed(
    policies: Sequence[str],
    target_range: PortRange | None,
    target_reserved: PortSet | None,
    kernel: KernelValues,
    previous: Provenance,
) -> str:
    """The node's one file for the composed target (`None`: a setting no policy manages).

    - The range line is the target range when the kernel's range is one nodesysctl set (this
      run, or an earlier one, per `previous`), else the kernel's own range (already inside the
      target: a narrower range the node has of its own is kept across reboots, never widened).
    - The reserved line is the kernel's list minus the ports nodesysctl added that no policy
      wants any more (the node's own entries and the target's stay).
    """
    ranges: tuple[PortRange, ...]
    after = kernel.range_after
    if target_range is None:
        range_line = None
        ranges = tuple(r for r in previous.ranges if r == after)
    elif after != kernel.range_before or after in previous.ranges:
        range_line = target_range
        ranges = tuple(dict.fromkeys([after, target_range]))
    else:
        range_line, ranges = after, ()
    added = subtract_ranges(kernel.reserved_after, kernel.reserved_before)
    ours = merge_ranges([*intersect_ranges(previous.reserved, kernel.reserved_after), *added])
    reserved_line = None
    if target_reserved is not None:
        released = subtract_ranges(ours, target_reserved)
        reserved_line = subtract_ranges(kernel.reserved_after, released)
    lines = [
        f"{HEADER} for NodeSysctlPolicy {', '.join(policies) or '(none)'}, composed; "
        "rewritten by their node agents.",
        Provenance(ranges, ours).render(),
    ]
    if range_line is not None:
        lines.append(f"{PORT_RANGE_KEY} = {format_port_range(range_line)}")
    if reserved_line is not None:
        lines.append(f"{RESERVED_PORTS_KEY} = {format_reserved_ports(reserved_line)}")
    return "\n".join(lines) + "\n"


def render_settled(
    policies: Sequence[str], port_range: PortRange | None, reserved: PortSet | None
) -> str:
    """The composed file the agent keeps on a node that already held these values of its own
    (nothing written, nothing recorded as nodesysctl's): a compliant node, for the demo, the
    bench and the tests."""
    kept_range = port_range or PortRange(32768, 60999)
    kept = merge_ranges(reserved or ())
    values = KernelValues(kept_range, kept_range, kept, kept)
    return render_composed(policies, port_range, reserved, values, Provenance())


def ours_by_pattern(files: HostDir) -> list[str]:
    """The per-policy files (spec version 1 names) of ours in `files`, by name (among its first
    MAX_DIR_ENTRIES names: a directory anyone can fill must not fill the agent's memory)."""
    try:
        names, more = files.names(MAX_DIR_ENTRIES)
    except FileNotFoundError:
        return []
    if more:
        log.warning("%s holds more than %d names: looked at the first", files.host_path, len(names))
    return sorted(n for n in names if PER_POLICY_FILE.match(n) and is_ours(files, n))
