"""Policies compose on a node: the intersection of their ranges, the union of their reserved
ports; only policies that cannot all hold conflict, and the older keeps the node."""

from __future__ import annotations

from typing import Any

import pytest

from nodesysctl.api import parse_spec
from nodesysctl.compose import (
    MIN_EPHEMERAL_PORTS,
    NodeComposition,
    NodeTarget,
    PolicyRanges,
    compose,
    incompatibility,
    target_of,
)
from nodesysctl.ports import PortRange

DAY = "2026-11-0{}T00:00:00Z"


def policy(name: str, day: int, low: int = 32768, high: int = 60999, **spec: Any) -> PolicyRanges:
    """A policy created on November `day`, allowing `low`-`high`."""
    ports = {"ephemeralRange": {"min": low, "max": high}, **spec.pop("ports", {})}
    return PolicyRanges(name, DAY.format(day), parse_spec({"ports": ports, **spec}))


def on_node(*policies: PolicyRanges, labels: dict[str, str] | None = None) -> NodeComposition:
    return compose("n1", labels or {}, policies)


def target(composition: NodeComposition) -> NodeTarget:
    assert composition.target is not None
    return composition.target


# --- the example ----------------------------------------------------------------------


def test_a_wide_and_a_narrow_range_compose_into_the_narrow_one() -> None:
    a, b = policy("a", 1), policy("b", 2, 40000, 50000)
    composed = on_node(b, a)
    assert composed.conflicts == ()
    assert target(composed).policies == ("a", "b")  # older first, whatever the input order
    assert target(composed).ephemeral == PortRange(40000, 50000)
    assert target(composed).narrow_range


def test_a_third_range_outside_both_conflicts_and_the_older_ones_keep_the_node() -> None:
    a, b = policy("a", 1), policy("b", 2, 40000, 50000)
    c = policy("c", 3, 20000, 29999)
    composed = on_node(a, b, c)
    assert target(composed).policies == ("a", "b")
    assert target(composed).ephemeral == PortRange(40000, 50000)  # unchanged: nothing flaps
    assert [(x.winner, x.loser) for x in composed.conflicts] == [("a", "c"), ("b", "c")]
    assert "no port in common (a allows 32768-60999, c allows 20000-29999)" in (
        composed.conflicts[0].reason
    )
    assert composed.lost("c")
    assert not composed.lost("a")
    assert composed.is_member("b")
    assert not composed.is_member("c")


def test_the_older_policy_wins_even_when_it_is_the_odd_one_out() -> None:
    c, a, b = policy("c", 1, 20000, 29999), policy("a", 2), policy("b", 3, 40000, 50000)
    composed = on_node(a, b, c)
    assert target(composed).policies == ("c",)
    assert {(x.winner, x.loser) for x in composed.conflicts} == {("c", "a"), ("c", "b")}


def test_the_same_created_time_is_decided_by_name() -> None:
    composed = on_node(policy("zeta", 1), policy("alpha", 1, 20000, 29999))
    assert target(composed).policies == ("alpha",)
    assert composed.conflicts[0].winner == "alpha"


# --- the rules, one by one --------------------------------------------------------------------


def test_an_intersection_below_the_minimum_conflicts() -> None:
    a, b = policy("a", 1, 32768, 40000), policy("b", 2, 39500, 60999)
    reason = incompatibility([a, b])
    assert "share only 501 ports, 39500-40000 (b allows 39500-60999, a allows 32768-40000)" in (
        reason
    )
    assert f"at least {MIN_EPHEMERAL_PORTS} are needed" in reason
    exactly = policy("b", 2, 39001, 60999)  # 1000 ports in common: enough
    assert incompatibility([a, exactly]) == ""


def test_reserved_ports_are_the_union_in_the_members_order() -> None:
    a = policy("a", 1, ports={"protectedPorts": [10250]})
    b = policy("b", 2, ports={"protectedPorts": [10256, 10250]})
    t = target(on_node(a, b))
    assert t.reserved == (
        PortRange(30000, 32767),
        PortRange(10250, 10250),
        PortRange(10256, 10256),
    )
    assert t.reserve_ports


def test_a_policy_that_does_not_reserve_adds_no_ports() -> None:
    a = policy("a", 1, ports={"protectedPorts": [10250]})
    b = policy(
        "b",
        2,
        40000,
        50000,
        ports={"nodePortRange": {"min": 50001, "max": 52767}},
        remediation={"reservePorts": False},
    )
    t = target(on_node(a, b))
    assert t.reserved == (PortRange(30000, 32767), PortRange(10250, 10250))


def test_a_nodeport_range_inside_the_intersection_conflicts() -> None:
    # a narrows into 20000-40000 (its NodePorts are elsewhere); b does not narrow and says
    # NodePorts are 30000-32767: they disagree on where the NodePorts are.
    a = policy("a", 1, 20000, 40000, ports={"nodePortRange": {"min": 50000, "max": 52767}})
    b = policy("b", 2, remediation={"narrowRange": False})
    composed = on_node(a, b)
    assert target(composed).policies == ("a",)
    assert "the nodePortRange 30000-32767 of b overlaps the ephemeral range 20000-40000" in (
        composed.conflicts[0].reason
    )


def test_a_policy_that_does_not_narrow_composes_with_one_that_does() -> None:
    a = policy("a", 1, 40000, 50000)
    b = policy("b", 2, remediation={"narrowRange": False}, ports={"protectedPorts": [10250]})
    t = target(on_node(a, b))
    assert t.policies == ("a", "b")
    assert t.ephemeral == PortRange(40000, 50000)  # only a's range counts
    alone = target(on_node(b))
    assert alone.ephemeral is None
    assert not alone.narrow_range


def test_a_protected_port_inside_the_intersection_needs_someone_to_reserve_it() -> None:
    # The CRD keeps a policy's own protected ports out of its range unless it reserves them,
    # so only a policy the API server did not validate gets here (an old CRD, say).
    a = policy("a", 1, remediation={"reservePorts": False})
    b = policy("b", 2, remediation={"reservePorts": False})
    unchecked = PolicyRanges(
        "u",
        DAY.format(3),
        b.spec.model_copy(
            update={"ports": b.spec.ports.model_copy(update={"protected_ports": [40000]})}
        ),
    )
    assert "ports 40000 that u protects lie inside the ephemeral range 32768-60999" in (
        incompatibility([a, unchecked])
    )
    reserving = policy("r", 4, ports={"protectedPorts": [40000]})
    assert incompatibility([a, unchecked, reserving]) == ""  # r reserves 40000 for everyone


def test_members_persisting_into_different_directories_conflict() -> None:
    a = policy("a", 1)
    b = policy("b", 2, remediation={"sysctlDir": "/usr/local/lib/sysctl.d"})
    assert (
        "persist into different directories (a into /etc/sysctl.d, b into /usr/local/lib/sysctl.d)"
        in (incompatibility([a, b]))
    )
    quiet = policy("q", 2, remediation={"sysctlDir": "/usr/local/lib/sysctl.d", "persist": False})
    t = target(on_node(a, quiet))
    assert (t.persist, t.sysctl_dir) == (True, "/etc/sysctl.d")
    lonely = target(on_node(quiet))
    assert (lonely.persist, lonely.sysctl_dir) == (False, "/usr/local/lib/sysctl.d")


def test_a_group_only_conflict_names_the_members() -> None:
    # The union of many policies' protected ports (64 each at most) can cover a small
    # intersection although no pair of them does: the newcomer conflicts with all of them.
    ports = list(range(40000, 41000))
    chunks = [ports[i : i + 64] for i in range(0, 1000, 64)]
    members = [
        policy(f"p{i:02}", 1, 40000, 40999, ports={"protectedPorts": chunk})
        for i, chunk in enumerate(chunks[:-1])
    ]
    last = policy("zz", 2, 40000, 40999, ports={"protectedPorts": chunks[-1]})
    composed = on_node(*members, last)
    assert target(composed).policies == tuple(m.name for m in members)
    [conflict] = composed.conflicts
    assert conflict.winner == "p00"
    assert conflict.reason.startswith("with p00, p01,")
    assert "the reserved ports cover all of the ephemeral range 40000-40999" in conflict.reason


# --- modes and selection ----------------------------------------------------------------------


def test_audit_policies_neither_compose_nor_conflict() -> None:
    a = policy("a", 1, 40000, 50000)
    audit = policy("audit", 0, 20000, 29999, remediation={"mode": "Audit"})
    composed = on_node(a, audit)
    assert composed.conflicts == ()
    assert target(composed).policies == ("a",)
    assert composed.audit == ("audit",)
    only_audit = on_node(audit)
    assert only_audit.target is None
    assert not only_audit.lost("audit")


def test_only_policies_that_select_the_node_count() -> None:
    a = policy("a", 1, nodeSelector={"matchLabels": {"pool": "x"}})
    c = policy("c", 2, 20000, 29999, nodeSelector={"matchLabels": {"pool": "y"}})
    assert target(on_node(a, c, labels={"pool": "x"})).policies == ("a",)
    assert on_node(a, c, labels={"pool": "x"}).conflicts == ()
    assert on_node(a, c, labels={}).target is None


# --- the target's digest ----------------------------------------------------------------------


def test_the_digest_changes_with_anything_the_agent_does_and_only_then() -> None:
    a, b = policy("a", 1), policy("b", 2, 40000, 50000)
    base = target_of([a, b]).digest()
    assert target_of([a, b]).digest() == base
    assert target_of([a]).digest() != base
    assert target_of([a, policy("b", 2, 40000, 50001)]).digest() != base
    assert target_of(
        [a, policy("b", 2, 40000, 50000, remediation={"persist": False})]
    ).digest() == (
        base  # a still persists: the node's file is the same
    )
    assert target_of([a, policy("b", 2, 40000, 50000, ports={"protectedPorts": [9]})]).digest() != (
        base
    )
    renamed = target_of([a, PolicyRanges("c", DAY.format(2), b.spec)]).digest()
    assert renamed != base  # the file's header names the members


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"metadata": {"name": "p", "creationTimestamp": DAY.format(1)}, "spec": {}}, "p"),
        ({"metadata": {"name": "p", "deletionTimestamp": DAY.format(2)}, "spec": {}}, None),
        ({"metadata": {"name": "p"}, "spec": {"ports": {"protectedPorts": "x"}}}, None),
    ],
)
def test_the_policy_index_keeps_valid_policies_not_being_deleted(
    body: dict[str, Any], expected: str | None
) -> None:
    ranges = PolicyRanges.from_body(body)
    assert (ranges.name if ranges else None) == expected
