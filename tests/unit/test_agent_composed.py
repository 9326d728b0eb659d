"""Agent spec version 2: the node's one composed file, the migration from per-policy files, and
what happens to the file when a policy leaves the node (the kernel keeps its values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE, AgentSpec, Status
from nodesysctl.agent.persist import (
    HEADER,
    KernelValues,
    Provenance,
    render,
    render_composed,
    same_values,
)
from nodesysctl.agent.run import AgentPaths, run_agent
from nodesysctl.ports import PortRange

from .test_agent_run import FakeNode

NODEPORTS = {"min": 30000, "max": 32767}


def composed(*policies: str, low: int = 32768, high: int = 60999, **changes: Any) -> AgentSpec:
    raw: dict[str, Any] = {
        "specVersion": 2,
        "policy": policies[0] if policies else "gone",
        "mode": "Enforce",
        "ephemeralRange": {"min": low, "max": high},
        "reservedRanges": [NODEPORTS, {"min": 10250, "max": 10250}],
        "policies": list(policies),
        **changes,
    }
    return AgentSpec.model_validate(raw)


def cleanup_only(policy: str = "gone") -> AgentSpec:
    """What a deleted policy's check runs where no Enforce policy remains."""
    return AgentSpec.model_validate(
        {
            "specVersion": 2,
            "policy": policy,
            "mode": "Enforce",
            "narrowRange": False,
            "reservePorts": False,
            "persist": False,
        }
    )


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    (tmp_path / "sys" / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net").mkdir()
    (tmp_path / "sysctl.d").mkdir()
    fake = FakeNode(tmp_path)
    fake.port_range = "1024\t65000\n"
    fake.reserved = "8080\n"  # the node's own: never dropped
    return fake


def the_file(node: FakeNode) -> Path:
    return node.root / "sysctl.d" / COMPOSED_PERSIST_FILE


def lines(node: FakeNode) -> list[str]:
    return the_file(node).read_text().splitlines()


def run(node: FakeNode, spec: AgentSpec, *clean: Path) -> Any:
    paths = AgentPaths(node.paths.proc_sys, node.paths.proc_net, node.paths.sysctl_dir)
    if clean:
        paths = AgentPaths(paths.proc_sys, paths.proc_net, paths.sysctl_dir, clean_dirs=clean)
    return run_agent(spec, paths, node="worker-1")


def test_the_composed_values_are_applied_and_persisted_in_one_file(node: FakeNode) -> None:
    result = run(node, composed("a", "b", low=40000, high=50000))
    assert result.status is Status.REMEDIATED
    assert node.port_range == "40000 50000\n"
    assert node.reserved == "8080,10250,30000-32767\n"
    assert lines(node) == [
        f"{HEADER} for NodeSysctlPolicy a, b, composed; rewritten by their node agents.",
        "# Set by nodesysctl, not the node's own: port range 40000-50000; "
        "reserved ports 10250,30000-32767",
        "net.ipv4.ip_local_port_range = 40000 50000",
        "net.ipv4.ip_local_reserved_ports = 8080,10250,30000-32767",
    ]
    assert result.after.persisted
    again = run(node, composed("a", "b", low=40000, high=50000))
    assert again.status is Status.COMPLIANT
    assert again.before.persisted


def test_per_policy_files_of_ours_are_migrated_and_nobody_elses_are_touched(
    node: FakeNode,
) -> None:
    sysctl_d = node.root / "sysctl.d"
    old = render("a", PortRange(32768, 60999), (PortRange(10250, 10250),))
    (sysctl_d / "zz-nodesysctl-a.conf").write_text(old)
    (sysctl_d / "99-nodesysctl-b.conf").write_text(old)
    stranger = {
        "50-stranger.conf": "net.ipv4.ip_forward = 1\n",
        "zz-nodesysctl-c.conf": "# not ours\nnet.core.somaxconn = 1024\n",
        "zz-nodesysctl-notes.txt": old,  # not a .conf name
    }
    for name, content in stranger.items():
        (sysctl_d / name).write_text(content)
    (sysctl_d / "zz-nodesysctl-d.conf").symlink_to(sysctl_d / "zz-nodesysctl-a.conf")
    result = run(node, composed("a", "b"))
    assert result.status is Status.REMEDIATED
    assert result.actions[-3:] == [
        f"created persistence file {sysctl_d / COMPOSED_PERSIST_FILE}",
        f"removed nodesysctl file {sysctl_d / '99-nodesysctl-b.conf'}",
        f"removed nodesysctl file {sysctl_d / 'zz-nodesysctl-a.conf'}",
    ]
    assert (
        f"per-policy file {sysctl_d / 'zz-nodesysctl-a.conf'} of an earlier nodesysctl: "
        in (result.drift[-1])
    )
    assert sorted(p.name for p in sysctl_d.iterdir()) == sorted(
        [COMPOSED_PERSIST_FILE, "zz-nodesysctl-d.conf", *stranger]
    )
    for name, content in stranger.items():
        assert (sysctl_d / name).read_text() == content
    assert (sysctl_d / "zz-nodesysctl-d.conf").is_symlink()  # a link is never ours


def test_a_policy_leaving_rewrites_the_file_with_the_rest_and_the_kernel_stays(
    node: FakeNode,
) -> None:
    both = composed(
        "a", "b", low=40000, high=50000,
        reservedRanges=[NODEPORTS, {"min": 10250, "max": 10250}, {"min": 10256, "max": 10256}],
    )  # fmt: skip
    assert run(node, both).status is Status.REMEDIATED
    kernel = (node.port_range, node.reserved)
    assert kernel == ("40000 50000\n", "8080,10250,10256,30000-32767\n")

    left = run(node, composed("a"))  # b is gone: a alone allows 32768-60999, reserves no 10256
    assert left.status is Status.REMEDIATED
    assert left.actions == [f"rewrote persistence file {the_file(node)}"]
    assert (node.port_range, node.reserved) == kernel  # the kernel keeps its values
    assert lines(node)[2:] == [
        "net.ipv4.ip_local_port_range = 32768 60999",  # a's range: b narrowed, not the node
        "net.ipv4.ip_local_reserved_ports = 8080,10250,30000-32767",  # 8080 is the node's
    ]
    assert run(node, composed("a")).status is Status.COMPLIANT  # stable

    # A reboot applies the file: the kernel now holds it; nothing is left to do.
    node.port_range, node.reserved = "32768\t60999\n", "8080,10250,30000-32767\n"
    after_reboot = run(node, composed("a"))
    assert after_reboot.status is Status.COMPLIANT
    assert after_reboot.actions == []


def test_a_narrower_range_of_the_nodes_own_is_persisted_not_widened(node: FakeNode) -> None:
    node.port_range = "45000\t46999\n"
    result = run(node, composed("a"))
    assert result.status is Status.REMEDIATED  # the ports and the file; not the range
    assert node.port_range == "45000\t46999\n"
    assert "net.ipv4.ip_local_port_range = 45000 46999" in lines(node)
    assert "port range none;" in lines(node)[1]


def test_without_persistence_our_file_is_removed_and_a_stranger_stays(node: FakeNode) -> None:
    run(node, composed("a"))
    (node.root / "sysctl.d" / "50-stranger.conf").write_text("net.ipv4.ip_forward = 1\n")
    result = run(node, composed("a", persist=False))
    assert result.status is Status.REMEDIATED
    assert result.drift == [
        f"persistence file {the_file(node)} is no longer wanted: no policy that selects this "
        "node persists"
    ]
    assert not the_file(node).exists()
    assert [p.name for p in (node.root / "sysctl.d").iterdir()] == ["50-stranger.conf"]
    assert run(node, composed("a", persist=False)).status is Status.COMPLIANT


def test_the_cleanup_of_a_deleted_policy_removes_every_file_of_ours_and_no_value(
    node: FakeNode, tmp_path: Path
) -> None:
    run(node, composed("gone"))
    old_dir = tmp_path / "old.d"
    old_dir.mkdir()
    legacy = render("gone", PortRange(32768, 60999), ())
    (old_dir / COMPOSED_PERSIST_FILE).write_text(the_file(node).read_text())
    (old_dir / "zz-nodesysctl-gone.conf").write_text(legacy)
    (old_dir / "60-admin.conf").write_text("net.ipv4.ip_forward = 1\n")
    kernel = (node.port_range, node.reserved)

    result = run(node, cleanup_only(), old_dir, tmp_path / "missing.d")
    assert result.status is Status.REMEDIATED
    assert (node.port_range, node.reserved) == kernel
    assert not the_file(node).exists()
    assert [p.name for p in old_dir.iterdir()] == ["60-admin.conf"]
    assert (
        f"nodesysctl file {old_dir / COMPOSED_PERSIST_FILE} is in a directory no policy "
        in (result.drift[1])
    )
    assert run(node, cleanup_only(), old_dir).status is Status.COMPLIANT


def test_a_cleanup_on_a_node_without_the_directory_is_compliant(tmp_path: Path) -> None:
    (tmp_path / "sys" / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net").mkdir()
    bare = FakeNode(tmp_path)
    bare.port_range, bare.reserved = "32768\t60999\n", "\n"
    assert run(bare, cleanup_only()).status is Status.COMPLIANT


def test_a_mask_is_kept_and_fails_only_when_a_policy_persists(node: FakeNode) -> None:
    the_file(node).symlink_to("/dev/null")
    assert run(node, composed("a")).status is Status.FAILED
    assert run(node, composed("a", persist=False)).status is Status.REMEDIATED  # the range
    assert os.readlink(the_file(node)) == "/dev/null"


def test_an_audit_check_of_version_2_touches_no_file(node: FakeNode) -> None:
    sysctl_d = node.root / "sysctl.d"
    (sysctl_d / "zz-nodesysctl-a.conf").write_text(render("a", None, ()))
    audit = composed("a", mode="Audit", persist=False, policies=[])
    result = run(node, audit)
    assert result.status is Status.DRIFTED
    assert [p.name for p in sysctl_d.iterdir()] == ["zz-nodesysctl-a.conf"]
    assert not result.before.persisted


# --- the provenance record, as plain functions ------------------------------------------------


Ports = list[tuple[int, int]]


def kernel(
    before: tuple[int, int], after: tuple[int, int], reserved_before: Ports, reserved_after: Ports
) -> KernelValues:
    """KernelValues from (lo, hi) ranges and the reserved lists before and after."""
    return KernelValues(
        PortRange(*before),
        PortRange(*after),
        tuple(PortRange(*r) for r in reserved_before),
        tuple(PortRange(*r) for r in reserved_after),
    )


def test_the_provenance_line_round_trips_and_garbage_reads_as_nothing() -> None:
    record = Provenance(
        (PortRange(40000, 50000), PortRange(1024, 1024)), (PortRange(10250, 10250),)
    )
    content = f"{HEADER} x\n{record.render()}\n"
    assert Provenance.parse(content) == record
    assert Provenance.parse(f"{HEADER} x\n{record.render().replace('10250', 'x')}\n") == (
        Provenance()
    )
    assert Provenance.parse("# someone else's\n" + record.render()) == Provenance()
    assert Provenance.parse(None) == Provenance()


def test_ports_nodesysctl_added_and_no_policy_wants_are_dropped_from_the_file() -> None:
    ours = Provenance((), (PortRange(10256, 10256),))
    text = render_composed(
        ["a"],
        PortRange(32768, 60999),
        (PortRange(10250, 10250),),
        kernel((40000, 50000), (40000, 50000), [(8080, 8080), (10250, 10250), (10256, 10256)],
               [(8080, 8080), (10250, 10250), (10256, 10256)]),
        ours,
    )  # fmt: skip
    assert "net.ipv4.ip_local_reserved_ports = 8080,10250" in text
    # 10256 stays on record while the kernel holds it (until a reboot): it is still ours.
    assert Provenance.parse(text).reserved == (PortRange(10256, 10256),)


def test_a_port_the_node_had_before_stays_when_the_policy_leaves() -> None:
    # 10250 was reserved by the node's own config when the policy came: not added by us.
    first = render_composed(
        ["a"], None, (PortRange(10250, 10250),),
        kernel((32768, 60999), (32768, 60999), [(10250, 10250)], [(10250, 10250)]),
        Provenance(),
    )  # fmt: skip
    assert Provenance.parse(first).reserved == ()
    without = render_composed(
        ["b"], None, (),
        kernel((32768, 60999), (32768, 60999), [(10250, 10250)], [(10250, 10250)]),
        Provenance.parse(first),
    )  # fmt: skip
    assert "net.ipv4.ip_local_reserved_ports = 10250" in without


def test_same_values_ignores_only_the_provenance_line() -> None:
    base = render_composed(
        ["a"], PortRange(32768, 60999), (),
        kernel((1024, 65000), (32768, 60999), [], []), Provenance(),
    )  # fmt: skip
    shrunk = base.replace("port range 32768-60999", "port range none")
    assert shrunk != base
    assert same_values(shrunk, base)
    assert not same_values(base.replace("60999\n", "60998\n"), base)
    assert not same_values(None, base)


def test_a_file_of_ours_this_run_removes_does_not_count_as_undoing_the_fix_at_boot(
    node: FakeNode,
) -> None:
    # The policy moved from /etc/sysctl.d to /usr/local/lib/sysctl.d: the old file (by the same
    # name, in the higher-priority directory) would replace the new one at boot, but this run
    # removes it.
    host = node.root / "host"
    old_dir, new_dir = host / "etc" / "sysctl.d", host / "usr" / "local" / "lib" / "sysctl.d"
    old_dir.mkdir(parents=True)
    new_dir.mkdir(parents=True)
    stale = (
        f"{HEADER} for NodeSysctlPolicy a, composed\nnet.ipv4.ip_local_port_range = 1024 65000\n"
    )
    (old_dir / COMPOSED_PERSIST_FILE).write_text(stale)
    paths = AgentPaths(
        node.paths.proc_sys, node.paths.proc_net, new_dir, host, clean_dirs=(old_dir,)
    )
    result = run_agent(composed("a"), paths, node="worker-1")
    assert result.status is Status.REMEDIATED, result.drift
    assert result.boot_overrides == []
    assert not (old_dir / COMPOSED_PERSIST_FILE).exists()
    assert (new_dir / COMPOSED_PERSIST_FILE).exists()
    # Without the clean-up it is what undoes the fix at boot.
    (old_dir / COMPOSED_PERSIST_FILE).write_text(stale)
    (new_dir / COMPOSED_PERSIST_FILE).unlink()
    kept = run_agent(composed("a"), AgentPaths(paths.proc_sys, paths.proc_net, new_dir, host))
    assert kept.status is Status.DRIFTED
    assert {o.file for o in kept.boot_overrides} == {f"/etc/sysctl.d/{COMPOSED_PERSIST_FILE}"}
