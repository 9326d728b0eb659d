"""Policies compose: what one node's agent enforces for all the policies that select the node.

Pure: plain data in (the node's name and labels, every valid policy), plain data out. For each
node the Enforce policies that select it are taken in precedence order (the older first, then
the smaller name), and each joins the composition if the composition stays satisfiable with it:

- the node's `ip_local_port_range` must lie inside the *intersection* of the `ephemeralRange`s
  of the members that narrow the range (`narrowRange: true`), which must span at least 1000
  ports (the CRD's own minimum for one policy);
- `ip_local_reserved_ports` must hold the *union* of the reserved ranges (`nodePortRange` and
  `protectedPorts`) of the members that reserve ports (`reservePorts: true`);
- no member's `nodePortRange` may overlap the intersection (host connections would take source
  ports that NodePort Services own, reserved or not: the CRD's rule for one policy);
- no member's protected port may lie inside the intersection unless some member reserves it;
- the reserved ports must leave at least one port of the intersection free;
- the members that persist must persist into the same `sysctlDir` (a node has one file).

A policy that cannot join conflicts with the members it cannot be combined with (or, when only
the whole composition excludes it, with the oldest member): the older keeps the node, the other
skips it, and both report the Conflict. `narrowRange: false` states no requirement on the range,
so it composes with any narrowing policy. An Audit policy is a dry run: it never joins a
composition and never takes a node from anyone, it only reports whether the node, as the
Enforce policies leave it, satisfies it. The result is a deterministic function of the node's
labels and the set of policies, so nothing flaps. The rules, with examples: docs/design.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nodesysctl.api import InvalidPolicy, Mode, NodeSysctlPolicySpec, parse_spec
from nodesysctl.ports import (
    PortRange,
    PortSet,
    contains_all,
    format_reserved_ports,
    intersect_ranges,
    merge_ranges,
    subtract_ranges,
)

# The CRD's "ephemeralRange must span at least 1000 ports": a composed range must, too.
MIN_EPHEMERAL_PORTS = 1000


@dataclasses.dataclass(frozen=True)
class PolicyRanges:
    """The node-facing part of one valid policy, for composing it with the others."""

    name: str
    created: str  # RFC 3339 creationTimestamp: the older policy wins a contested node
    spec: NodeSysctlPolicySpec

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PolicyRanges | None:
        """A policy as the others see it; None while it is being deleted (the node's file is
        rewritten without it) or when its spec is invalid (an invalid policy applies nothing)."""
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidPolicy:
            return None
        return cls(str(meta.get("name", "")), str(meta.get("creationTimestamp") or ""), spec)

    @property
    def enforces(self) -> bool:
        return self.spec.remediation.mode == Mode.ENFORCE


@dataclasses.dataclass(frozen=True)
class NodeTarget:
    """What the agent enforces on one node: the composition of its Enforce policies.

    `ephemeral` is None when no member narrows the range; `reserved` is empty when none
    reserves ports. The file `<sysctl_dir>/zz-nodesysctl.conf` holds these values when
    `persist` (any member persists) and is removed otherwise. `reserved` lists each member's
    reserved ranges in order, each once (the agent merges them into the node's list).
    """

    policies: tuple[str, ...]  # the members, in precedence order
    ephemeral: PortRange | None
    reserve_ports: bool
    reserved: PortSet
    persist: bool
    sysctl_dir: str
    # The members' NodePort ranges, each once: which reserved ports are NodePorts (for the
    # agent's socket census only, so not part of the digest).
    node_ports: tuple[PortRange, ...] = ()

    @property
    def narrow_range(self) -> bool:
        return self.ephemeral is not None

    def digest(self) -> str:
        """Changes whenever what the node's agent does for this composition changes."""
        relevant = {
            "policies": list(self.policies),
            "ephemeral": str(self.ephemeral) if self.ephemeral else None,
            "reservePorts": self.reserve_ports,
            "reserved": format_reserved_ports(self.reserved),
            "persist": self.persist,
            "sysctlDir": self.sysctl_dir,
        }
        text = json.dumps(relevant, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Conflict:
    node: str
    winner: str
    loser: str
    reason: str


@dataclasses.dataclass(frozen=True)
class NodeComposition:
    """Who does what on one node: the Enforce members' target (None without any), the Audit
    policies that select it, and the conflicts of the policies left out."""

    node: str
    target: NodeTarget | None
    audit: tuple[str, ...] = ()
    conflicts: tuple[Conflict, ...] = ()

    def is_member(self, policy: str) -> bool:
        return self.target is not None and policy in self.target.policies

    def lost(self, policy: str) -> bool:
        """Whether `policy` selects the node but another policy keeps it."""
        return any(c.loser == policy for c in self.conflicts)


def precedence(policies: Iterable[PolicyRanges]) -> list[PolicyRanges]:
    """Oldest first, then by name: the order in which policies claim a node."""
    return sorted(policies, key=lambda p: (p.created, p.name))


def _range(policy: PolicyRanges) -> PortRange:
    r = policy.spec.ports.ephemeral_range
    return PortRange(r.min, r.max)


def _reserved(policy: PolicyRanges) -> PortSet:
    return merge_ranges(PortRange(r.min, r.max) for r in policy.spec.ports.reserved_ranges())


def _reserved_in_order(policy: PolicyRanges) -> list[PortRange]:
    return [PortRange(r.min, r.max) for r in policy.spec.ports.reserved_ranges()]


def _names(policies: Iterable[PolicyRanges]) -> str:
    return ", ".join(p.name for p in policies)


def target_of(members: Sequence[PolicyRanges]) -> NodeTarget:
    """The composed values of `members` (in precedence order), satisfiable or not: see
    `incompatibility`. An empty intersection is kept as the first narrowing member's range
    here; `incompatibility` says why such a composition cannot hold."""
    narrowing = [p for p in members if p.spec.remediation.narrow_range]
    ephemeral: PortRange | None = None
    for policy in narrowing:
        own = _range(policy)
        ephemeral = own if ephemeral is None else (ephemeral.intersection(own) or ephemeral)
    reserving = [p for p in members if p.spec.remediation.reserve_ports]
    # In the members' own order, each range once: the agent merges them into the node's list.
    reserved = tuple(dict.fromkeys(r for p in reserving for r in _reserved_in_order(p)))
    persisting = [p for p in members if p.spec.remediation.persist]
    home = persisting[0] if persisting else (members[0] if members else None)
    return NodeTarget(
        policies=tuple(p.name for p in members),
        ephemeral=ephemeral,
        reserve_ports=bool(reserving),
        reserved=reserved,
        persist=bool(persisting),
        sysctl_dir=home.spec.remediation.sysctl_dir if home else "/etc/sysctl.d",
        node_ports=tuple(
            dict.fromkeys(
                PortRange(p.spec.ports.node_port_range.min, p.spec.ports.node_port_range.max)
                for p in members
            )
        ),
    )


def incompatibility(members: Sequence[PolicyRanges]) -> str:
    """Why these Enforce policies cannot all hold on one node ("" when they compose)."""
    narrowing = [p for p in members if p.spec.remediation.narrow_range]
    ephemeral: PortRange | None = None
    if narrowing:
        low = max(narrowing, key=lambda p: _range(p).lo)
        high = min(narrowing, key=lambda p: _range(p).hi)
        lo, hi = _range(low).lo, _range(high).hi
        pair = f"{low.name} allows {_range(low)}, {high.name} allows {_range(high)}"
        if lo > hi:
            return f"their ephemeral ranges have no port in common ({pair})"
        if hi - lo + 1 < MIN_EPHEMERAL_PORTS:
            return (
                f"their ephemeral ranges share only {hi - lo + 1} ports, {lo}-{hi} ({pair}); "
                f"at least {MIN_EPHEMERAL_PORTS} are needed"
            )
        ephemeral = PortRange(lo, hi)
    reserved = merge_ranges(
        r for p in members if p.spec.remediation.reserve_ports for r in _reserved(p)
    )
    if ephemeral is not None:
        where = f"the ephemeral range {ephemeral} that {_names(narrowing)} leave"
        for policy in members:
            node_ports = policy.spec.ports.node_port_range
            if PortRange(node_ports.min, node_ports.max).overlaps(ephemeral):
                return (
                    f"the nodePortRange {node_ports.min}-{node_ports.max} of {policy.name} "
                    f"overlaps {where}"
                )
            protected = [PortRange.single(port) for port in policy.spec.ports.protected_ports]
            exposed = subtract_ranges(intersect_ranges(protected, [ephemeral]), reserved)
            if exposed:
                return (
                    f"ports {format_reserved_ports(exposed)} that {policy.name} protects lie "
                    f"inside {where} and no policy reserves them"
                )
        if contains_all(reserved, [ephemeral]):
            return f"the reserved ports cover all of {where}"
    dirs: dict[str, str] = {}
    for policy in members:
        if policy.spec.remediation.persist:
            dirs.setdefault(policy.spec.remediation.sysctl_dir, policy.name)
    if len(dirs) > 1:
        where = ", ".join(f"{name} into {path}" for path, name in dirs.items())
        return f"they persist into different directories ({where}); a node has one nodesysctl file"
    return ""


def compose(
    node: str, labels: Mapping[str, str], policies: Iterable[PolicyRanges]
) -> NodeComposition:
    """The composition on one node of every policy in `policies` that selects it."""
    selecting = [p for p in precedence(policies) if p.spec.node_selector.matches(labels)]
    members: list[PolicyRanges] = []
    conflicts: list[Conflict] = []
    for candidate in (p for p in selecting if p.enforces):
        if not incompatibility([*members, candidate]):
            members.append(candidate)
            continue
        blockers = [(m, reason) for m in members if (reason := incompatibility([m, candidate]))]
        if not blockers:  # only all of them together leave no room
            together = incompatibility([*members, candidate])
            blockers = [(members[0], f"with {_names(members)}: {together}")]
        conflicts += [Conflict(node, m.name, candidate.name, reason) for m, reason in blockers]
    return NodeComposition(
        node=node,
        target=target_of(members) if members else None,
        audit=tuple(p.name for p in selecting if not p.enforces),
        conflicts=tuple(conflicts),
    )


def conflict_notes(conflicts: Iterable[Conflict], policy: str) -> tuple[str, ...]:
    """The conflicts `policy` takes part in, as sentences for its status and Events."""
    return tuple(
        f"node {c.node}: {c.winner} takes precedence over {c.loser} ({c.reason})"
        for c in conflicts
        if policy in (c.winner, c.loser)
    )
