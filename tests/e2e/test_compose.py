"""Policies compose on a node, and deleting one cleans the node: end to end, on real kernels
(network namespaces), with the operator as a real process (issue 12)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE
from nodesysctl.agent.persist import render
from nodesysctl.planning import NodeResult
from nodesysctl.ports import PortRange, parse_port_range, parse_reserved_ports

from .conftest import OperatorProcess, Policies
from .test_operator import (
    RANGE,
    RESERVED,
    WIDENED,
    condition,
    enforce_spec,
    node_result,
    policy_jobs,
    ready,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

STRANGER = "50-stranger.conf"
STRANGER_TEXT = "# an admin's own file\nnet.ipv4.ip_forward = 1\n"
# How long "nothing flaps" is watched. Stability does not rest on this wait alone: the
# composition is a function of the node's labels and the set of policies, and the test also
# checks that the winners' results (their spec hashes) did not change when the loser came.
STABLE_SECONDS = 30.0


def narrow(selector: dict[str, str], low: int, high: int, *protected: int) -> dict[str, Any]:
    return enforce_spec(
        selector,
        ports={"ephemeralRange": {"min": low, "max": high}, "protectedPorts": [*protected]},
    )


def no_conflict(body: dict[str, Any]) -> bool:
    return ready(body) and condition(body, "Conflict").get("status") == "False"


def wait_composed(policies: Policies, node: SimulatedNode, *names: str) -> None:
    """Until every one of `names` is Ready without a Conflict at the same time, and the node's
    file names them all (a check made before all of them were known is redone)."""

    def composed() -> bool:
        return set(members(node)) == set(names) and all(no_conflict(policies.get(n)) for n in names)

    wait_for(composed, timeout=180, what=f"{', '.join(names)} composed on {node.name}")


def members(node: SimulatedNode) -> list[str]:
    """The policies the node's file says it composes (in precedence order: the older first,
    policies created in the same second by name)."""
    header = the_file(node).partition("\n")[0]
    listed = header.partition("NodeSysctlPolicy ")[2].partition(", composed")[0]
    return listed.split(", ") if listed else []


def in_range(node: SimulatedNode, low: int, high: int) -> bool:
    now = parse_port_range(node.get_sysctl(RANGE))
    return low <= now.lo and now.hi <= high


def the_file(node: SimulatedNode) -> str:
    return node.sysctl_conf_files().get(COMPOSED_PERSIST_FILE, "")


def values(text: str) -> dict[str, str]:
    """The `key = value` lines of a sysctl.d file."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def results(api: Any, node: str, *names: str) -> dict[str, NodeResult | None]:
    return {name: node_result(api, node, name) for name in names}


def jobs_of(api: Any, *names: str) -> set[str]:
    return {job["metadata"]["name"] for name in names for job in policy_jobs(api, name)}


def test_compatible_policies_compose_and_an_incompatible_one_conflicts_without_flapping(
    operator: OperatorProcess, policies: Policies, node_factory: Any, api_client: Any, test_id: str
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    a, b, c = f"{test_id}-a", f"{test_id}-b", f"{test_id}-c"
    policies.create(a, narrow(node_factory.selector, 32768, 60999, 10250))
    policies.create(b, narrow(node_factory.selector, 40000, 50000, 10256))

    # The node ends inside 40000-50000, which satisfies both: both Ready, no Conflict.
    wait_composed(policies, node, a, b)
    assert in_range(node, 40000, 50000)
    reserved = parse_reserved_ports(node.get_sysctl(RESERVED))
    for port in (10250, 10256, 30000, 32767):
        assert any(r.contains_port(port) for r in reserved), port
    persisted = the_file(node)
    assert members(node) == [a, b]  # created in this order (or in one second: by name)
    assert values(persisted) == {
        RANGE: "40000 50000",
        RESERVED: "10250,10256,30000-32767",
    }
    assert [n for n in node.sysctl_conf_files() if "nodesysctl" in n] == [COMPOSED_PERSIST_FILE]

    # C allows 20000-29999: no port in common with A or B. C conflicts, on both sides.
    settled = results(api_client, node.name, a, b)
    jobs_before = jobs_of(api_client, a, b)
    policies.create(c, narrow(node_factory.selector, 20000, 29999))
    body_c = wait_policy(
        policies, c, lambda body: condition(body, "Conflict").get("status") == "True", "Conflict"
    )
    assert (
        f"node {node.name}: {a} takes precedence over {c}"
        in condition(body_c, "Conflict")["message"]
    )
    assert body_c["status"]["nodes"] == 0
    body_a = wait_policy(
        policies, a, lambda body: condition(body, "Conflict").get("status") == "True", "Conflict"
    )
    assert f"{a} takes precedence over {c}" in condition(body_a, "Conflict")["message"]

    # Nothing flaps: no new Job of anyone, the winners' results stand, the node stays put.
    time.sleep(STABLE_SECONDS)
    assert jobs_of(api_client, a, b) == jobs_before
    assert policy_jobs(api_client, c) == []
    assert results(api_client, node.name, a, b) == settled
    assert in_range(node, 40000, 50000)
    assert the_file(node) == persisted
    for name in (a, b):
        assert ready(policies.get(name))


def test_deleting_policies_rewrites_then_removes_the_nodes_file_and_nothing_else(
    operator: OperatorProcess, policies: Policies, node_factory: Any, api_client: Any, test_id: str
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    sysctl_d = node.host_path("/etc/sysctl.d")
    (sysctl_d / STRANGER).write_text(STRANGER_TEXT)
    # A file an earlier version left for a policy long gone: the composed file replaces it.
    legacy = f"zz-nodesysctl-{test_id}-old.conf"
    (sysctl_d / legacy).write_text(render(f"{test_id}-old", PortRange(32768, 60999), ()))
    stays, goes = f"{test_id}-stays", f"{test_id}-goes"
    policies.create(stays, narrow(node_factory.selector, 32768, 60999, 10250))
    policies.create(goes, narrow(node_factory.selector, 40000, 50000, 10256))
    wait_composed(policies, node, stays, goes)
    assert values(the_file(node)) == {RANGE: "40000 50000", RESERVED: "10250,10256,30000-32767"}
    assert not (sysctl_d / legacy).exists()
    kernel = (node.get_sysctl(RANGE), node.get_sysctl(RESERVED))

    # One deleted: the node's file holds only the remaining policy's values, its reserved
    # ports and its range; the kernel keeps its values until the next boot.
    policies.delete(goes, timeout=120)
    persisted = the_file(node)
    assert members(node) == [stays]
    assert values(persisted) == {RANGE: "32768 60999", RESERVED: "10250,30000-32767"}
    assert (node.get_sysctl(RANGE), node.get_sysctl(RESERVED)) == kernel
    wait_policy(policies, stays, no_conflict, "still Ready")

    # The last one deleted: the file is gone; the stranger's file was never touched.
    policies.delete(stays, timeout=120)
    wait_for(lambda: not the_file(node), timeout=10, what="the node's file removed")
    assert node.sysctl_conf_files() == {STRANGER: STRANGER_TEXT}
    assert (node.get_sysctl(RANGE), node.get_sysctl(RESERVED)) == kernel
