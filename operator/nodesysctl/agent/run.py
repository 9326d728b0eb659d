"""One agent run: read everything, decide, and in Enforce mode write, verify and persist.

The order matters (see docs/agent.md): nothing is written unless every value parsed; reserved
ports are written before the range so the protected ports are reserved before the range moves;
each write is read back and verified before the next one; the first failure stops all writes.

When persisting, the run also checks the boot order (`nodesysctl.agent.bootorder`): a file of
someone else's that systemd-sysctl would apply after ours, undoing the fix at every boot, is
reported by name; in Enforce mode it is drift the agent leaves alone (status Drifted).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeVar

from nodesysctl.agent import persist
from nodesysctl.agent.bootfiles import read_search_path
from nodesysctl.agent.bootorder import (
    SEARCH_DIRS,
    Entry,
    EntryKind,
    Override,
    normalize_key,
    parse_assignments,
)
from nodesysctl.agent.bootorder import check as check_boot_order
from nodesysctl.agent.contract import (
    MAX_BOOT_OVERRIDES,
    MAX_SOCKETS,
    AgentResult,
    AgentSpec,
    BootOverride,
    ConflictingSocket,
    Mode,
    PortRangeModel,
    Status,
    SysctlState,
)
from nodesysctl.agent.hostfs import HostDir, HostFileError
from nodesysctl.agent.sockets import classify, read_sockets
from nodesysctl.agent.sysctl import PORT_RANGE_KEY, RESERVED_PORTS_KEY, ProcSys
from nodesysctl.ports import (
    PortRange,
    PortSet,
    contains_all,
    format_port_range,
    format_reserved_ports,
    intersect_ranges,
    merge_ranges,
    parse_port_range,
    parse_reserved_ports,
    port_count,
    subtract_ranges,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def agent_version() -> str:
    try:
        return version("nodesysctl")
    except PackageNotFoundError:
        return "unknown"


# Where the Job mounts host paths: the host's /etc/sysctl.d is /host/etc/sysctl.d in the pod.
HOST_MOUNT_ROOT = Path("/host")
# What a freshly booted kernel holds before systemd-sysctl writes anything (and keeps when a
# write is refused).
KERNEL_DEFAULT_RANGE = PortRange(32768, 60999)
KERNEL_DEFAULT_RESERVED: PortSet = ()


@dataclass(frozen=True)
class AgentPaths:
    proc_sys: Path = Path("/proc/sys")
    proc_net: Path = Path("/proc/net")
    sysctl_dir: Path = Path("/host/etc/sysctl.d")
    # Where the host's `/` would be: links in the sysctl directory are resolved inside it, and
    # messages name host paths. None: HOST_MOUNT_ROOT when the sysctl directory is under it (the
    # Job), else `/` (the agent runs on the host itself, as in the netns tests).
    host_root: Path | None = None
    # Other host sysctl directories (mounted) that may hold a file of ours: a sysctlDir some
    # policy used before. Spec version 2 removes nodesysctl's files from them.
    clean_dirs: tuple[Path, ...] = ()

    def effective_host_root(self) -> Path:
        if self.host_root is not None:
            return self.host_root
        if self.sysctl_dir.is_relative_to(HOST_MOUNT_ROOT):
            return HOST_MOUNT_ROOT
        return Path("/")


class VerifyError(Exception):
    """A value read back after a write is not the value that was written."""


@dataclass(frozen=True)
class _Observed:
    """The node's values as read; `None` where a value could not be read or parsed."""

    port_range: PortRange | None
    reserved: PortSet | None
    persisted: bool

    def state(self) -> SysctlState:
        return SysctlState(
            ip_local_port_range=(
                None if self.port_range is None else PortRangeModel.from_range(self.port_range)
            ),
            ip_local_reserved_ports=(
                None if self.reserved is None else format_reserved_ports(self.reserved)
            ),
            persisted=self.persisted,
        )


@dataclass
class _Step:
    """One write: `apply` writes and verifies, raising on any failure."""

    todo: str  # "write X = 1 (was 2)", for errors
    done: str  # "wrote X = 1 (was 2)", for actions
    apply: Callable[[], None]


@dataclass
class _Report:
    drift: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Sockets:
    conflicting: list[ConflictingSocket] = field(default_factory=list)
    count: int = 0
    services: int = 0


@dataclass
class _Boot:
    overrides: list[Override] = field(default_factory=list)
    drift: bool = False  # the overrides are drift (Enforce with persist): the status is Drifted

    def models(self) -> list[BootOverride]:
        return [
            BootOverride(file=o.file, key=o.key, value=o.value)
            for o in self.overrides[:MAX_BOOT_OVERRIDES]
        ]


def _boot_range_ok(allowed: PortRange) -> Callable[[str | None], bool]:
    def ok(value: str | None) -> bool:
        try:
            booted = KERNEL_DEFAULT_RANGE if value is None else parse_port_range(value)
        except ValueError:
            booted = KERNEL_DEFAULT_RANGE  # the kernel refuses the write; its default stays
        return allowed.contains_range(booted)

    return ok


def _boot_reserved_ok(wanted: PortSet) -> Callable[[str | None], bool]:
    def ok(value: str | None) -> bool:
        try:
            booted = KERNEL_DEFAULT_RESERVED if value is None else parse_reserved_ports(value)
        except ValueError:
            booted = KERNEL_DEFAULT_RESERVED
        return contains_all(booted, wanted)

    return ok


def _override_sentence(override: Override, ours: str) -> str:
    if posixpath.basename(override.file) == posixpath.basename(ours):
        what = f"replaces {ours} at boot (same name, higher-priority directory)"
    elif override.value is None:
        what = f"removes the setting of {override.key} ('-{override.key}'), read after {ours}"
    else:
        what = f"sets {override.key} = {override.value}, read after {ours} at boot"
    return f"{override.file} {what}: it would undo the fix at every boot (PersistOverridden)"


def _ports_text(ranges: PortSet) -> str:
    return format_reserved_ports(ranges) or "(none)"


def _read_port_range(sysctl: ProcSys) -> PortRange:
    return parse_port_range(sysctl.read(PORT_RANGE_KEY))


def _read_reserved(sysctl: ProcSys) -> PortSet:
    return parse_reserved_ports(sysctl.read(RESERVED_PORTS_KEY))


def _describe_error(what: str, exc: Exception) -> str:
    if isinstance(exc, HostFileError) and exc.path in what:
        return f"{what}: {exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in what else ""
        return f"{what}: {exc.strerror}{where}"
    return f"{what}: {exc}"


class _Agent:
    def __init__(self, spec: AgentSpec, paths: AgentPaths) -> None:
        self.spec = spec
        self.sysctl = ProcSys(paths.proc_sys)
        self.proc_net = paths.proc_net
        self.host_root = paths.effective_host_root()
        self.files = HostDir(paths.sysctl_dir, self.host_root)
        # Messages name the host's paths (/etc/sysctl.d/...): those are what an admin can see.
        self.sysctl_dir = self.files.host_path
        self.persist_name = spec.persist_file_name
        self.legacy_name = spec.legacy_persist_file_name
        self.persist_path = self.files.host_path_of(self.persist_name)
        self.legacy_path = self.files.host_path_of(self.legacy_name)
        self.report = _Report()
        self.boot = _Boot()
        self.targets: tuple[PortRange, PortSet] | None = None  # what our file holds after the run
        # Spec version 2 in Enforce mode: the node's one composed file is managed (written when
        # persisting, removed when not), and earlier versions' per-policy files are replaced.
        self.composed = spec.composed
        # Whether the persistence file is part of compliance (Enforce mode only).
        self.enforce_persist = spec.persist and spec.mode is Mode.ENFORCE
        self.clean_dirs = [
            d
            for d in (HostDir(path, self.host_root) for path in paths.clean_dirs)
            if d.host_path != self.files.host_path
        ]
        # Host paths of the files of ours this run removes: not there at the next boot.
        self.removing: set[str] = set()
        # Read by `read_all` before any decision (version 2 needs them for the file's content).
        self.kernel_before: tuple[PortRange, PortSet] | None = None
        self.previous = persist.Provenance()

    def expected_file(self, port_range: PortRange, reserved: PortSet) -> str:
        spec = self.spec
        if not self.composed:
            return persist.render(
                spec.policy,
                port_range if spec.narrow_range else None,
                reserved if spec.reserve_ports else None,
            )
        range_before, reserved_before = self.kernel_before or (port_range, reserved)
        return persist.render_composed(
            spec.policies,
            spec.ephemeral if spec.narrow_range else None,
            merge_ranges(spec.reserved) if spec.reserve_ports else None,
            persist.KernelValues(range_before, port_range, reserved_before, reserved),
            self.previous,
        )

    def persisted(self, port_range: PortRange | None, reserved: PortSet | None) -> bool:
        """Whether the file holds exactly what it should for these values (best effort)."""
        if not self.spec.persist or port_range is None or reserved is None:
            return False
        if self.spec.spec_version >= 2 and not self.composed:
            return False  # an Audit check of version 2 reads no file
        try:
            existing = self.files.read(self.persist_name)
        except (OSError, HostFileError) as exc:
            log.warning("cannot read %s: %s", self.persist_path, exc)
            return False
        expected = self.expected_file(port_range, reserved)
        if self.composed:
            return persist.same_values(existing.content, expected)
        return existing.content == expected

    def observe(self) -> _Observed:
        """Read the current values without judging them; for the `after` state."""
        try:
            port_range: PortRange | None = _read_port_range(self.sysctl)
        except (OSError, ValueError):
            port_range = None
        try:
            reserved: PortSet | None = _read_reserved(self.sysctl)
        except (OSError, ValueError):
            reserved = None
        return _Observed(port_range, reserved, self.persisted(port_range, reserved))

    def read_all(self) -> tuple[PortRange | None, PortSet | None, str | None]:
        """Read and parse everything a decision needs; every failure becomes an error."""
        errors = self.report.errors
        port_range: PortRange | None = None
        reserved: PortSet | None = None
        existing_file: str | None = None
        try:
            port_range = _read_port_range(self.sysctl)
        except (OSError, ValueError) as exc:
            errors.append(_describe_error(f"cannot read {PORT_RANGE_KEY}", exc))
        try:
            reserved = _read_reserved(self.sysctl)
        except (OSError, ValueError) as exc:
            errors.append(_describe_error(f"cannot read {RESERVED_PORTS_KEY}", exc))
        if port_range is not None and reserved is not None:
            self.kernel_before = (port_range, reserved)
        if self.composed:
            existing_file = self.read_composed(errors)
        elif self.enforce_persist:
            existing_file = self.read_persisted(errors)
        return port_range, reserved, existing_file

    def read_composed(self, errors: list[str]) -> str | None:
        """Version 2: the node's file, which also records what nodesysctl set (`Provenance`).
        Without persistence a missing directory holds nothing to remove: not an error."""
        if not self.spec.persist:
            try:
                self.files.open()
            except FileNotFoundError:
                return None
            except (OSError, HostFileError) as exc:
                errors.append(
                    _describe_error(f"cannot open sysctl directory {self.sysctl_dir}", exc)
                )
                return None
            try:
                found = self.files.read(self.persist_name)
            except (OSError, HostFileError) as exc:
                errors.append(_describe_error(f"cannot read {self.persist_path}", exc))
                return None
            self.previous = persist.Provenance.parse(found.content)
            return found.content
        content = self.read_persisted(errors)
        self.previous = persist.Provenance.parse(content)
        return content

    def read_persisted(self, errors: list[str]) -> str | None:
        try:
            self.files.open()
        except FileNotFoundError:
            errors.append(
                f"sysctl directory {self.sysctl_dir} does not exist "
                "(is the host's /etc/sysctl.d mounted?)"
            )
            return None
        except (OSError, HostFileError) as exc:
            errors.append(_describe_error(f"cannot open sysctl directory {self.sysctl_dir}", exc))
            return None
        try:
            found = self.files.read(self.persist_name)
        except (OSError, HostFileError) as exc:
            errors.append(_describe_error(f"cannot read {self.persist_path}", exc))
            return None
        if found.masked:
            # sysctl.d(5): the admin disabled this file name on purpose; replacing the mask
            # would undo that, and it is a link, which the agent never writes through.
            errors.append(
                f"persistence file {self.persist_path} is masked (a link to /dev/null): "
                "not replacing the node admin's mask (remove it, or set persist: false)"
            )
        return found.content

    def check_sockets(self) -> _Sockets:
        found = classify(read_sockets(self.proc_net), self.spec.node_ports, self.spec.protected)
        surfaced = [c for c in found if c.surfaced]
        return _Sockets(
            [
                ConflictingSocket(
                    proto=c.socket.proto,
                    local_address=c.socket.local_address,
                    port=c.socket.port,
                    state=c.socket.state,
                    kind=c.kind.value,
                    remote_address=c.socket.remote_address,
                    remote_port=c.socket.remote_port,
                )
                for c in surfaced[:MAX_SOCKETS]
            ],
            len(surfaced),
            len(found) - len(surfaced),
        )

    def check_boot_order(self, port_range: PortRange, reserved: PortSet) -> None:
        """Report the files that would undo our persisted values at boot (see the module doc).

        `port_range` and `reserved` are the values our file holds after this run. In Enforce
        mode the overrides are drift; in Audit mode they are only reported.
        """
        if not self.spec.persist:
            return
        directory = self.sysctl_dir
        if directory not in SEARCH_DIRS:
            self.report.warnings.append(
                f"boot order not checked: {directory} is not in the systemd-sysctl search path "
                f"({', '.join(SEARCH_DIRS)}), so systemd-sysctl does not apply "
                f"{self.persist_path} at boot"
            )
            return
        acceptable: dict[str, Callable[[str | None], bool]] = {}
        if self.spec.narrow_range:
            acceptable[PORT_RANGE_KEY] = _boot_range_ok(self.spec.ephemeral)
        if self.spec.reserve_ports:
            acceptable[RESERVED_PORTS_KEY] = _boot_reserved_ok(self.spec.reserved)
        if not acceptable:
            return
        keys = [normalize_key(key) for key in acceptable]
        found = read_search_path(self.host_root, keys)
        self.report.warnings.extend(found.problems)
        content = self.expected_file(port_range, reserved)
        ours = Entry(
            self.persist_path,
            EntryKind.FILE,
            parse_assignments(content, self.persist_path, keys),
        )
        # A file of ours this run removes (an earlier version's, or in an earlier sysctlDir)
        # is not there at the next boot.
        entries = {
            directory: [e for e in listed if e.path not in self.removing]
            for directory, listed in found.entries.items()
        }
        checked = check_boot_order(entries, ours, acceptable)
        log.info("boot order: %s", ", ".join(checked.files) or "(no files)")
        self.report.warnings.extend(
            f"cannot tell whether {e.path} changes {' or '.join(acceptable)} at boot: {e.reason}"
            for e in checked.unreadable
        )
        self.boot.overrides = list(checked.overrides)
        sentences = [_override_sentence(o, self.persist_path) for o in checked.overrides]
        for sentence in sentences:
            log.warning("boot order: %s", sentence)
        if self.enforce_persist and sentences:
            self.boot.drift = True
            self.report.drift.extend(sentences)

    def plan(
        self, port_range: PortRange, reserved: PortSet, existing_file: str | None
    ) -> list[_Step]:
        """Record the drift and return the writes that fix it, in the order they must run."""
        spec = self.spec
        drift = self.report.drift
        steps: list[_Step] = []

        target_reserved = reserved
        if spec.reserve_ports:
            missing = subtract_ranges(spec.reserved, reserved)
            if missing:
                target_reserved = merge_ranges([*reserved, *spec.reserved])
                drift.append(
                    f"{RESERVED_PORTS_KEY} is missing {port_count(missing)} protected port(s): "
                    f"{_ports_text(missing)} (current: {_ports_text(reserved)})"
                )
                steps.append(self.reserved_step(reserved, target_reserved))

        target_range = port_range
        if spec.narrow_range and not spec.ephemeral.contains_range(port_range):
            target_range = spec.ephemeral
            overlap = intersect_ranges([port_range], spec.reserved)
            overlap_note = (
                f"; it overlaps protected ports {_ports_text(overlap)}" if overlap else ""
            )
            drift.append(
                f"{PORT_RANGE_KEY} {port_range} is not within the allowed ephemeral range "
                f"{spec.ephemeral}{overlap_note}"
            )
            steps.append(self.range_step(port_range, target_range))

        self.targets = (target_range, target_reserved)
        if self.composed:
            steps += self.composed_file_steps(target_range, target_reserved, existing_file)
        elif self.enforce_persist:
            expected = self.expected_file(target_range, target_reserved)
            if existing_file != expected:
                state = "is missing" if existing_file is None else "has different content"
                drift.append(f"persistence file {self.persist_path} {state}")
                try:
                    # Known before any sysctl is written, so a file that cannot be replaced
                    # stops the run with nothing changed instead of half way.
                    self.files.check_replaceable(self.persist_name)
                except (OSError, HostFileError) as exc:
                    self.report.errors.append(
                        _describe_error(f"cannot replace persistence file {self.persist_path}", exc)
                    )
                steps.append(self.persist_step(existing_file, expected))
            if self.legacy_name != self.persist_name and persist.is_ours(
                self.files, self.legacy_name
            ):
                drift.append(
                    f"legacy persistence file {self.legacy_path} is applied before "
                    "99-sysctl.conf (/etc/sysctl.conf) at boot"
                )
                steps.append(self.remove_legacy_step())
        return steps

    def composed_file_steps(
        self, target_range: PortRange, target_reserved: PortSet, existing_file: str | None
    ) -> list[_Step]:
        """Version 2: write (or, when no policy persists, remove) the node's one file, then
        remove every per-policy file of ours here and every file of ours in the directories
        no policy persists into any more. Removals come after the write (steps stop at the
        first failure), so a failed write never leaves a node with no file at all."""
        drift = self.report.drift
        steps: list[_Step] = []
        if self.spec.persist:
            expected = self.expected_file(target_range, target_reserved)
            if not persist.same_values(existing_file, expected):
                state = "is missing" if existing_file is None else "has different content"
                drift.append(f"persistence file {self.persist_path} {state}")
                try:
                    self.files.check_replaceable(self.persist_name)
                except (OSError, HostFileError) as exc:
                    self.report.errors.append(
                        _describe_error(f"cannot replace persistence file {self.persist_path}", exc)
                    )
                steps.append(self.persist_step(existing_file, expected))
        elif existing_file is not None and persist.is_ours(self.files, self.persist_name):
            drift.append(
                f"persistence file {self.persist_path} is no longer wanted: no policy that "
                "selects this node persists"
            )
            steps.append(self.remove_step(self.files, self.persist_name, "persistence file"))
        why = (
            f"replaced by {self.persist_name}"
            if self.spec.persist
            else "no policy that selects this node persists"
        )
        for directory in [self.files, *self.clean_dirs]:
            try:
                names = persist.ours_by_pattern(directory)
                if directory is not self.files and persist.is_ours(directory, self.persist_name):
                    names.insert(0, self.persist_name)
            except (OSError, HostFileError) as exc:
                self.report.errors.append(
                    _describe_error(f"cannot list sysctl directory {directory.host_path}", exc)
                )
                continue
            for name in names:
                path = directory.host_path_of(name)
                if directory is self.files:
                    drift.append(f"per-policy file {path} of an earlier nodesysctl: {why}")
                else:
                    drift.append(
                        f"nodesysctl file {path} is in a directory no policy persists into any more"
                    )
                steps.append(self.remove_step(directory, name, "nodesysctl file"))
        return steps

    def remove_step(self, directory: HostDir, name: str, what: str) -> _Step:
        self.removing.add(directory.host_path_of(name))

        def apply() -> None:
            directory.remove(name)

        target = f"{what} {directory.host_path_of(name)}"
        return _Step(f"remove {target}", f"removed {target}", apply)

    def remove_legacy_step(self) -> _Step:
        """After the new file is written (steps stop at the first failure): remove the old one,
        so a reboot never applies a stale copy."""

        def apply() -> None:
            self.files.remove(self.legacy_name)

        target = f"legacy persistence file {self.legacy_path}"
        return _Step(f"remove {target}", f"removed {target}", apply)

    def reserved_step(self, current: PortSet, target: PortSet) -> _Step:
        change = f"{RESERVED_PORTS_KEY} = {_ports_text(target)} (was {_ports_text(current)})"

        def apply() -> None:
            self.write_verified(
                RESERVED_PORTS_KEY, target, format_reserved_ports, parse_reserved_ports
            )

        return _Step(f"write {change}", f"wrote {change}", apply)

    def range_step(self, current: PortRange, target: PortRange) -> _Step:
        change = (
            f"{PORT_RANGE_KEY} = {format_port_range(target)} (was {format_port_range(current)})"
        )

        def apply() -> None:
            self.write_verified(PORT_RANGE_KEY, target, format_port_range, parse_port_range)

        return _Step(f"write {change}", f"wrote {change}", apply)

    def persist_step(self, existing: str | None, expected: str) -> _Step:
        def apply() -> None:
            self.files.write(self.persist_name, expected)
            if self.files.read(self.persist_name).content != expected:
                raise VerifyError(f"{self.persist_path} does not hold what was written")

        verb = "create" if existing is None else "rewrite"
        past = "created" if existing is None else "rewrote"
        target = f"persistence file {self.persist_path}"
        return _Step(f"{verb} {target}", f"{past} {target}", apply)

    def write_verified(
        self, key: str, value: T, render: Callable[[T], str], parse: Callable[[str], T]
    ) -> None:
        text = render(value)
        # The parser is the only judge of what the kernel holds: refuse to write a text it would
        # not read back as the intended value.
        if parse(text) != value:
            raise VerifyError(f"refusing to write {text!r}: it does not parse back as intended")
        self.sysctl.write(key, text)
        actual = parse(self.sysctl.read(key))
        if actual != value:
            raise VerifyError(f"read back {render(actual)!r} after writing {text!r}")

    def execute(self, steps: list[_Step]) -> None:
        for index, step in enumerate(steps):
            log.info("%s", step.todo)
            try:
                step.apply()
            except (OSError, ValueError, VerifyError) as exc:
                self.report.errors.append(_describe_error(f"failed to {step.todo}", exc))
                skipped = [s.todo for s in steps[index + 1 :]]
                if skipped:
                    self.report.errors.append("not done after the failure: " + "; ".join(skipped))
                return
            self.report.actions.append(step.done)


def run_agent(
    spec: AgentSpec,
    paths: AgentPaths,
    *,
    node: str = "",
    now: datetime | None = None,
) -> AgentResult:
    """Check (and in Enforce mode fix) one node; never raises for node-side problems."""
    agent = _Agent(spec, paths)
    try:
        return _run(agent, node, now)
    finally:
        agent.files.close()
        for directory in agent.clean_dirs:
            directory.close()


def _run(agent: _Agent, node: str, now: datetime | None) -> AgentResult:
    spec = agent.spec
    report = agent.report
    checked_at = now or datetime.now(UTC)
    port_range, reserved, existing_file = agent.read_all()
    sockets = agent.check_sockets()
    before = _Observed(port_range, reserved, agent.persisted(port_range, reserved)).state()

    def result(status: Status, after: SysctlState) -> AgentResult:
        return AgentResult(
            policy=spec.policy,
            node=node,
            mode=spec.mode,
            status=status,
            before=before,
            after=after,
            drift=report.drift,
            actions=report.actions,
            conflicting_sockets=sockets.conflicting,
            conflicting_socket_count=sockets.count,
            service_socket_count=sockets.services,
            boot_overrides=agent.boot.models(),
            boot_override_count=len(agent.boot.overrides),
            warnings=report.warnings,
            errors=report.errors,
            agent_version=agent_version(),
            checked_at=checked_at,
        )

    if report.errors or port_range is None or reserved is None:
        log.error("not changing anything: %s", "; ".join(report.errors))
        return result(Status.FAILED, before)

    steps = agent.plan(port_range, reserved, existing_file)
    for sentence in report.drift:
        log.info("drift: %s", sentence)
    if report.errors:  # the persistence file cannot be replaced: change nothing
        log.error("not changing anything: %s", "; ".join(report.errors))
        return result(Status.FAILED, before)
    assert agent.targets is not None
    agent.check_boot_order(*agent.targets)
    if not report.drift:
        return result(Status.COMPLIANT, before)
    if spec.mode is Mode.AUDIT:
        return result(Status.DRIFTED, before)

    agent.execute(steps)
    after = agent.observe().state()
    if report.errors:
        return result(Status.FAILED, after)
    # What could be fixed is fixed (`actions`); a file that undoes it at boot is not ours to edit.
    return result(Status.DRIFTED if agent.boot.drift else Status.REMEDIATED, after)


def failed_result(
    message: str, *, policy: str = "", node: str = "", now: datetime | None = None
) -> AgentResult:
    """The result for a run that could not start (no or bad spec)."""
    return AgentResult(
        policy=policy,
        node=node,
        status=Status.FAILED,
        errors=[message],
        agent_version=agent_version(),
        checked_at=now or datetime.now(UTC),
    )
