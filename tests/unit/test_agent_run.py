"""The agent's decisions and write order, against a fake `/proc/sys` tree in a temp dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.contract import AgentResult, AgentSpec, Mode, Status
from nodesysctl.agent.run import AgentPaths, run_agent
from nodesysctl.agent.sysctl import ProcSys

BASE_SPEC: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Enforce",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}, {"min": 10250, "max": 10250}],
}
PERSIST_FILE = "zz-nodesysctl-nodeport-safe.conf"
COMPLIANT_FILE = (
    "# Managed by nodesysctl for NodeSysctlPolicy nodeport-safe; rewritten by its node agent.\n"
    "net.ipv4.ip_local_port_range = 32768 60999\n"
    "net.ipv4.ip_local_reserved_ports = 10250,30000-32767\n"
)


def make_spec(**changes: Any) -> AgentSpec:
    return AgentSpec.model_validate({**BASE_SPEC, **changes})


@dataclass
class FakeNode:
    """A node's sysctls as plain files, laid out like /proc/sys and /proc/net."""

    root: Path

    @property
    def paths(self) -> AgentPaths:
        return AgentPaths(self.root / "sys", self.root / "net", self.root / "sysctl.d")

    def _file(self, name: str) -> Path:
        return self.root / "sys" / "net" / "ipv4" / name

    @property
    def port_range(self) -> str:
        return self._file("ip_local_port_range").read_text()

    @port_range.setter
    def port_range(self, text: str) -> None:
        self._file("ip_local_port_range").write_text(text)

    @property
    def reserved(self) -> str:
        return self._file("ip_local_reserved_ports").read_text()

    @reserved.setter
    def reserved(self, text: str) -> None:
        self._file("ip_local_reserved_ports").write_text(text)

    @property
    def persist_file(self) -> Path:
        return self.root / "sysctl.d" / PERSIST_FILE

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """Content and mtime of every file, to prove that nothing was written."""
        return {
            str(p.relative_to(self.root)): (p.read_text(), p.stat().st_mtime_ns)
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }

    def run(self, spec: AgentSpec | None = None) -> AgentResult:
        return run_agent(spec or make_spec(), self.paths, node="worker-1")


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    (tmp_path / "sys" / "net" / "ipv4").mkdir(parents=True)
    (tmp_path / "net").mkdir()
    (tmp_path / "sysctl.d").mkdir()
    fake = FakeNode(tmp_path)
    fake.port_range = "32768\t60999\n"  # the kernel's defaults
    fake.reserved = "\n"
    return fake


def make_compliant(node: FakeNode) -> None:
    node.reserved = "10250,30000-32767\n"
    node.persist_file.write_text(COMPLIANT_FILE)


def test_drifted_node_is_remediated_reserved_ports_first(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    result = node.run()
    assert result.status is Status.REMEDIATED
    assert result.exit_code == 0
    assert node.port_range == "32768 60999\n"
    assert node.reserved == "10250,30000-32767\n"
    assert node.persist_file.read_text() == COMPLIANT_FILE
    assert oct(node.persist_file.stat().st_mode & 0o777) == "0o644"
    assert [a.split(" = ")[0] for a in result.actions] == [
        "wrote net.ipv4.ip_local_reserved_ports",
        "wrote net.ipv4.ip_local_port_range",
        f"created persistence file {node.persist_file}",
    ]
    assert result.before.ip_local_port_range is not None
    assert (result.before.ip_local_port_range.min, result.before.ip_local_port_range.max) == (
        1024,
        65000,
    )
    assert result.after.ip_local_port_range is not None
    assert result.after.ip_local_port_range.min == 32768
    assert result.after.ip_local_reserved_ports == "10250,30000-32767"
    assert result.after.persisted
    assert not result.before.persisted
    assert len(result.drift) == 3
    assert "1024-65000 is not within the allowed ephemeral range 32768-60999" in result.drift[1]
    assert "overlaps protected ports 10250,30000-32767" in result.drift[1]
    assert result.errors == []
    assert result.node == "worker-1"


def test_existing_reserved_entries_are_kept(node: FakeNode) -> None:
    node.reserved = "8080,9000-9010\n"
    result = node.run()
    assert result.status is Status.REMEDIATED
    assert node.reserved == "8080,9000-9010,10250,30000-32767\n"
    assert "net.ipv4.ip_local_reserved_ports = 8080,9000-9010,10250,30000-32767" in (
        node.persist_file.read_text()
    )
    assert result.before.ip_local_reserved_ports == "8080,9000-9010"


def test_compliant_node_is_not_touched(node: FakeNode) -> None:
    make_compliant(node)
    before = node.snapshot()
    result = node.run()
    assert result.status is Status.COMPLIANT
    assert (result.drift, result.actions, result.errors) == ([], [], [])
    assert result.before == result.after
    assert result.before.persisted
    assert node.snapshot() == before


def test_a_narrower_range_inside_the_allowed_one_is_compliant_and_persisted_as_is(
    node: FakeNode,
) -> None:
    node.port_range = "40000\t50000\n"
    node.reserved = "10250,30000-32767\n"
    result = node.run()
    assert result.status is Status.REMEDIATED
    assert result.actions == [f"created persistence file {node.persist_file}"]
    assert node.port_range == "40000\t50000\n"  # not rewritten
    assert "net.ipv4.ip_local_port_range = 40000 50000\n" in node.persist_file.read_text()


def test_second_run_is_idempotent(node: FakeNode) -> None:
    node.port_range = "1024 65000\n"
    assert node.run().status is Status.REMEDIATED
    after_first = node.snapshot()
    second = node.run()
    assert second.status is Status.COMPLIANT
    assert node.snapshot() == after_first
    assert list(node.persist_file.parent.iterdir()) == [node.persist_file]  # no temp files left


def test_a_changed_persistence_file_is_rewritten(node: FakeNode) -> None:
    make_compliant(node)
    node.persist_file.write_text("net.ipv4.ip_local_port_range = 1024 65000\n")
    result = node.run()
    assert result.status is Status.REMEDIATED
    assert result.drift == [f"persistence file {node.persist_file} has different content"]
    assert result.actions == [f"rewrote persistence file {node.persist_file}"]
    assert node.persist_file.read_text() == COMPLIANT_FILE


def test_audit_reports_drift_and_changes_nothing(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    node.reserved = "8080\n"
    before = node.snapshot()
    result = node.run(make_spec(mode="Audit"))
    assert result.status is Status.DRIFTED
    assert result.exit_code == 0
    assert result.mode is Mode.AUDIT
    assert result.actions == []
    assert len(result.drift) == 2  # the persistence file is not judged in Audit mode
    assert result.after == result.before
    assert node.snapshot() == before
    assert not node.persist_file.exists()


def test_audit_of_a_compliant_runtime_without_a_file_is_compliant(node: FakeNode) -> None:
    node.reserved = "10250,30000-32767\n"
    result = node.run(make_spec(mode="Audit"))
    assert result.status is Status.COMPLIANT
    assert not result.before.persisted


def test_switches_limit_what_is_checked(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    before = node.snapshot()
    result = node.run(make_spec(narrowRange=False, reservePorts=False, persist=False))
    assert result.status is Status.COMPLIANT
    assert node.snapshot() == before


def test_reserve_only_leaves_the_range_alone(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    result = node.run(make_spec(narrowRange=False, persist=False))
    assert result.status is Status.REMEDIATED
    assert node.port_range == "1024\t65000\n"
    assert node.reserved == "10250,30000-32767\n"
    assert not node.persist_file.exists()


def test_custom_persist_file_and_range_only_content(node: FakeNode) -> None:
    node.run(make_spec(reservePorts=False, persistFile="60-ports.conf"))
    content = (node.root / "sysctl.d" / "60-ports.conf").read_text()
    assert "ip_local_port_range = 32768 60999" in content
    assert "reserved" not in content


def test_the_spec_names_the_persisted_file_and_one_already_there_is_rewritten(
    node: FakeNode,
) -> None:
    """The agent writes the file its spec names (any plain `*.conf` name), over a regular file
    of that name that is not its own: what a holder of the operator's token can make it do
    (docs/security.md, Operator token holder)."""
    admin = node.root / "sysctl.d" / "10-admin.conf"
    admin.parent.mkdir(parents=True, exist_ok=True)
    admin.write_text("kernel.kptr_restrict = 2\n")
    node.run(make_spec(persistFile="10-admin.conf"))
    content = admin.read_text()
    assert "kptr_restrict" not in content
    assert "ip_local_port_range = 32768 60999" in content


@pytest.mark.parametrize(
    ("file", "garbage", "message"),
    [
        ("port_range", "1024 banana\n", "cannot parse '1024 banana\\n': 'banana' is not a port"),
        ("port_range", "", "expected two port numbers, found 0 fields"),
        ("reserved", "8080,,9000\n", "empty entry"),
        ("reserved", "8080\xff\n", "cannot read net.ipv4.ip_local_reserved_ports"),
    ],
)
def test_garbage_values_fail_without_any_write(
    node: FakeNode, file: str, garbage: str, message: str
) -> None:
    node.port_range = "1024\t65000\n"  # drifted too: a write would be tempting
    setattr(node, file, garbage)
    before = node.snapshot()
    result = node.run()
    assert result.status is Status.FAILED
    assert result.exit_code == 1
    assert result.actions == []
    assert any(message in error for error in result.errors), result.errors
    assert node.snapshot() == before
    assert not node.persist_file.exists()


def test_a_missing_sysctl_file_fails(node: FakeNode) -> None:
    (node.root / "sys" / "net" / "ipv4" / "ip_local_reserved_ports").unlink()
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors == [
        "cannot read net.ipv4.ip_local_reserved_ports: No such file or directory "
        f"({node.root}/sys/net/ipv4/ip_local_reserved_ports)"
    ]
    assert result.before.ip_local_port_range is not None
    assert result.before.ip_local_reserved_ports is None


def test_a_missing_sysctl_dir_fails_before_any_write(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    (node.root / "sysctl.d").rmdir()
    before = node.snapshot()
    result = node.run()
    assert result.status is Status.FAILED
    assert "does not exist (is the host's /etc/sysctl.d mounted?)" in result.errors[0]
    assert node.snapshot() == before


def test_a_write_failure_stops_all_further_writes(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.port_range = "1024\t65000\n"
    real_write = ProcSys.write

    def write(self: ProcSys, key: str, value: str) -> None:
        if key.endswith("port_range"):
            raise PermissionError(13, "Permission denied", str(self.path(key)))
        real_write(self, key, value)

    monkeypatch.setattr(ProcSys, "write", write)
    result = node.run()
    assert result.status is Status.FAILED
    # Reserving ports first means the failure left the node safer, not worse.
    assert node.reserved == "10250,30000-32767\n"
    assert node.port_range == "1024\t65000\n"
    assert not node.persist_file.exists()
    assert len(result.actions) == 1
    assert result.actions[0].startswith("wrote net.ipv4.ip_local_reserved_ports")
    assert result.errors[0].startswith(
        "failed to write net.ipv4.ip_local_port_range = 32768 60999 (was 1024 65000): "
        "Permission denied"
    )
    assert result.errors[1] == (
        f"not done after the failure: create persistence file {node.persist_file}"
    )
    assert result.after.ip_local_reserved_ports == "10250,30000-32767"


def test_a_read_back_mismatch_stops_all_further_writes(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.port_range = "1024\t65000\n"

    def write_ignored(self: ProcSys, key: str, value: str) -> None:
        # A kernel that accepts the write and keeps only part of it.
        self.path(key).write_text("8080\n")

    monkeypatch.setattr(ProcSys, "write", write_ignored)
    result = node.run()
    assert result.status is Status.FAILED
    assert result.actions == []
    assert "read back '8080' after writing '10250,30000-32767'" in result.errors[0]
    assert "not done after the failure: write net.ipv4.ip_local_port_range" in result.errors[1]
    assert node.port_range == "1024\t65000\n"
    assert not node.persist_file.exists()


def test_an_unreadable_persistence_file_fails_before_any_write(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    node.persist_file.mkdir()  # a directory where the file should be
    before = node.snapshot()
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors == [f"cannot read {node.persist_file}: Is a directory"]
    assert node.snapshot() == before


def test_a_failed_persistence_write_leaves_no_temp_file(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_compliant(node)
    node.persist_file.write_text("old\n")

    def replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", replace)
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors == [
        f"failed to rewrite persistence file {node.persist_file}: No space left on device"
    ]
    assert [p.name for p in node.persist_file.parent.iterdir()] == [PERSIST_FILE]
    assert node.persist_file.read_text() == "old\n"


def test_sockets_in_reserved_ranges_are_reported(node: FakeNode) -> None:
    make_compliant(node)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
    any4 = "00000000"
    lines = [
        f"   0: {any4}:7918 {any4}:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        f"   1: {any4}:1F90 {any4}:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2",
        f"   2: {any4}:7919 {any4}:0000 06 00000000:00000000 00:00000000 00000000 0 0 3",
    ]
    (node.root / "net" / "tcp").write_text(header + "\n".join(lines) + "\n")
    result = node.run()
    assert result.status is Status.COMPLIANT  # sockets are reported, not drift
    assert result.conflicting_socket_count == 2
    assert [(s.port, s.state) for s in result.conflicting_sockets] == [
        (31000, "LISTEN"),
        (31001, "TIME_WAIT"),
    ]


def test_node_reads_use_the_given_root(node: FakeNode) -> None:
    assert ProcSys(node.root / "sys").path("net.ipv4.ip_local_port_range") == (
        node.root / "sys" / "net" / "ipv4" / "ip_local_port_range"
    )
    assert os.fspath(node.paths.sysctl_dir).endswith("sysctl.d")


def test_a_value_too_long_to_read_in_one_call_fails(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nodesysctl.agent.sysctl.READ_LIMIT", 16)
    node.reserved = "8080,9000-9010,10250,30000-32767\n"
    result = node.run()
    assert result.status is Status.FAILED
    assert "ip_local_reserved_ports holds more than 16 bytes" in result.errors[0]


# --- the file name and the legacy file -------------------------------------------------------


def test_the_persistence_file_sorts_after_99_sysctl_conf() -> None:
    # systemd-sysctl applies files by name, last wins; 99-sysctl.conf links to /etc/sysctl.conf.
    assert sorted(["99-sysctl.conf", PERSIST_FILE, "99-zz-late.conf"])[-1] == PERSIST_FILE


def test_a_legacy_file_of_ours_is_replaced_after_the_new_one_is_written(node: FakeNode) -> None:
    make_compliant(node)
    node.persist_file.unlink()
    legacy = node.root / "sysctl.d" / "99-nodesysctl-nodeport-safe.conf"
    legacy.write_text(COMPLIANT_FILE)
    result = node.run()
    assert result.status is Status.REMEDIATED
    assert result.drift == [
        f"persistence file {node.persist_file} is missing",
        f"legacy persistence file {legacy} is applied before 99-sysctl.conf "
        "(/etc/sysctl.conf) at boot",
    ]
    assert result.actions == [
        f"created persistence file {node.persist_file}",
        f"removed legacy persistence file {legacy}",
    ]
    assert [p.name for p in (node.root / "sysctl.d").iterdir()] == [PERSIST_FILE]
    assert node.run().status is Status.COMPLIANT


def test_a_file_by_the_legacy_name_that_is_not_ours_is_left_alone(node: FakeNode) -> None:
    make_compliant(node)
    stranger = node.root / "sysctl.d" / "99-nodesysctl-nodeport-safe.conf"
    stranger.write_text("# written by someone else\nnet.ipv4.ip_forward = 1\n")
    assert node.run().status is Status.COMPLIANT
    assert stranger.read_text().startswith("# written by someone else")


def test_the_legacy_file_is_not_touched_in_audit_mode(node: FakeNode) -> None:
    make_compliant(node)
    legacy = node.root / "sysctl.d" / "99-nodesysctl-nodeport-safe.conf"
    legacy.write_text(COMPLIANT_FILE)
    assert node.run(make_spec(mode="Audit")).status is Status.COMPLIANT
    assert legacy.exists()


# --- host files: links, masks, sizes, FIFOs (nodesysctl.agent.hostfs) ------------------------


def test_a_symlink_at_the_persistence_name_fails_the_run_before_any_write(
    node: FakeNode,
) -> None:
    node.port_range = "1024\t65000\n"
    outside = node.root / "outside.conf"
    outside.write_text("kernel.something = 1\n")
    node.persist_file.symlink_to(outside)
    before = node.snapshot()
    result = node.run()
    assert result.status is Status.FAILED
    assert result.actions == []
    [error] = result.errors
    assert error.startswith(
        f"cannot replace persistence file {node.persist_file}: Is a symbolic link: not replaced "
        "(the agent never writes or removes through a link); it leads to "
    )
    # Nothing written: not the sysctls, not the link's target, not the link.
    assert node.snapshot() == before
    assert node.persist_file.is_symlink()


def test_a_symlinked_persistence_file_inside_the_root_is_read(node: FakeNode) -> None:
    # What a link leads to (inside the host root) is what a reboot applies: read, not refused.
    make_compliant(node)
    real = node.root / "kept.conf"
    node.persist_file.rename(real)
    node.persist_file.symlink_to(real)
    result = node.run()
    assert result.status is Status.COMPLIANT
    assert result.before.persisted


def test_a_masked_persistence_file_fails_and_the_mask_stays(node: FakeNode) -> None:
    node.reserved = "10250,30000-32767\n"
    node.persist_file.symlink_to("/dev/null")
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors == [
        f"persistence file {node.persist_file} is masked (a link to /dev/null): not replacing "
        "the node admin's mask (remove it, or set persist: false)"
    ]
    assert os.readlink(node.persist_file) == "/dev/null"
    assert not node.run(make_spec(mode="Audit")).before.persisted  # a mask persists nothing


def test_a_persistence_file_over_the_size_cap_fails_before_any_write(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    with node.persist_file.open("wb") as big:
        big.truncate(2 << 20)
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors == [
        f"cannot read {node.persist_file}: Is {2 << 20} bytes, larger than the 1048576 bytes "
        "the agent reads from one file: not read"
    ]
    assert node.port_range == "1024\t65000\n"


@pytest.mark.timeout(5)
def test_a_fifo_at_the_persistence_name_fails_at_once(node: FakeNode) -> None:
    node.port_range = "1024\t65000\n"
    os.mkfifo(node.persist_file)
    result = node.run()
    assert result.status is Status.FAILED
    assert result.errors[0].startswith(
        f"cannot read {node.persist_file}: Is a FIFO (named pipe): not read"
    )
    assert node.port_range == "1024\t65000\n"


def test_a_legacy_name_that_is_a_link_is_not_ours_and_is_left_alone(node: FakeNode) -> None:
    make_compliant(node)
    ours_elsewhere = node.root / "copy.conf"
    ours_elsewhere.write_text(COMPLIANT_FILE)
    legacy = node.root / "sysctl.d" / "99-nodesysctl-nodeport-safe.conf"
    legacy.symlink_to(ours_elsewhere)
    assert node.run().status is Status.COMPLIANT
    assert legacy.is_symlink()
    assert ours_elsewhere.read_text() == COMPLIANT_FILE


def test_messages_name_host_paths_when_the_host_root_is_mounted(node: FakeNode) -> None:
    # As in the Job: the host's /etc/sysctl.d is <host root>/etc/sysctl.d in the pod.
    host_root = node.root / "host"
    sysctl_dir = host_root / "etc" / "sysctl.d"
    sysctl_dir.mkdir(parents=True)
    paths = AgentPaths(node.paths.proc_sys, node.paths.proc_net, sysctl_dir, host_root)
    result = run_agent(make_spec(), paths)
    assert result.status is Status.REMEDIATED
    assert result.actions[-1] == f"created persistence file /etc/sysctl.d/{PERSIST_FILE}"
    assert (sysctl_dir / PERSIST_FILE).read_text() == COMPLIANT_FILE


def test_the_host_root_defaults_to_the_jobs_mount_or_slash() -> None:
    assert AgentPaths().effective_host_root() == Path("/host")
    assert AgentPaths(sysctl_dir=Path("/tmp/x/sysctl.d")).effective_host_root() == Path("/")
    explicit = AgentPaths(sysctl_dir=Path("/r/etc/sysctl.d"), host_root=Path("/r"))
    assert explicit.effective_host_root() == Path("/r")
