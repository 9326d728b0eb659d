"""The node agent's input (`AgentSpec`) and output (`AgentResult`), as JSON with camelCase keys.

Pure: pydantic and `nodesysctl.ports` only. The operator builds an `AgentSpec` from a policy,
passes it to the Job, and reads the `AgentResult` back from the pod's termination message, which
Kubernetes truncates at 4 KiB: `AgentResult.to_json()` therefore always fits in
`MAX_RESULT_BYTES`, cutting lists and long strings first (never the status or the counts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from nodesysctl.api import Mode as Mode  # re-exported: the agent speaks the policy's modes
from nodesysctl.ports import MAX_PORT, PortRange, contains_all

# Kubernetes cuts termination messages at 4096 bytes; keep a margin below it.
MAX_RESULT_BYTES = 4000
MAX_SOCKETS = 20
MAX_MESSAGES = 10
MAX_MESSAGE_CHARS = 300
MAX_NAME_CHARS = 253
MAX_RESERVED_TEXT_CHARS = 300
MAX_BOOT_OVERRIDES = 5
MAX_PATH_CHARS = 300
MAX_VALUE_CHARS = 100

# systemd-sysctl applies the *.conf files of all sysctl.d directories in the order of their
# names, the last setting wins. Distributions link /etc/sysctl.d/99-sysctl.conf to
# /etc/sysctl.conf, where ranges are usually widened by hand: a "99-..." name loses to it at
# boot, "zz-..." sorts after every digit-prefixed name.
PERSIST_FILE_PATTERN = "zz-nodesysctl-{policy}.conf"
# Where earlier versions persisted; the agent replaces such a file of ours.
LEGACY_PERSIST_FILE_PATTERN = "99-nodesysctl-{policy}.conf"
# Spec version 2: one file per node holding the composed values of every policy there
# ("zz-nodesysctl.conf" sorts after "zz-nodesysctl-<policy>.conf": '.' > '-'). The agent
# replaces the per-policy files of versions 1 (both patterns above) with it.
COMPOSED_PERSIST_FILE = "zz-nodesysctl.conf"
PER_POLICY_FILE = re.compile(r"^(zz|99)-nodesysctl-[a-z0-9]([-a-z0-9.]*[a-z0-9])?\.conf$")
SPEC_VERSION = 2

_POLICY_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# systemd-sysctl and `sysctl --system` only read `*.conf`; no path separators allowed.
_PERSIST_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.conf$")


class Status(StrEnum):
    COMPLIANT = "Compliant"  # nothing to do
    REMEDIATED = "Remediated"  # drift found, fixed and read back verified
    # Drift found and not fixed: in Audit mode any drift; in Enforce mode a file of someone
    # else's that would undo the fix at boot (`bootOverrides`), which the agent never edits.
    DRIFTED = "Drifted"
    FAILED = "Failed"  # an error; see `errors`


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with an ellipsis when cut.

    What UTF-8 cannot carry (a host file name that is not UTF-8 comes back from the OS with
    surrogate escapes) is spelled out as `\\udcff`: the result must always serialize."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cap_messages(messages: list[str], count: int, chars: int) -> list[str]:
    """At most `count` (>= 2) entries of at most `chars` characters; the last says what was cut."""
    clipped = [clip(m, chars) for m in messages]
    if len(clipped) <= count:
        return clipped
    return [*clipped[: count - 1], f"… and {len(clipped) - count + 1} more"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        frozen=True,
        extra="forbid",
    )
    # Fields added after the first release, left out of the JSON while empty (like Go's
    # omitempty): a spec or result without them reads exactly as it did, and stays small.
    OMIT_EMPTY: ClassVar[frozenset[str]] = frozenset()

    def omitted(self) -> tuple[str, ...]:
        """Fields left out of the JSON whatever their value (a model's own rule)."""
        return ()

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.OMIT_EMPTY:
                for key in (name, to_camel(name)):
                    if key in data and not data[key]:
                        del data[key]
            for name in self.omitted():
                for key in (name, to_camel(name)):
                    data.pop(key, None)
        return data


class PortRangeModel(_Model):
    """`{"min": 30000, "max": 32767}`, inclusive."""

    min: int = Field(ge=1, le=MAX_PORT)
    max: int = Field(ge=1, le=MAX_PORT)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def to_range(self) -> PortRange:
        return PortRange(self.min, self.max)

    @classmethod
    def from_range(cls, port_range: PortRange) -> PortRangeModel:
        return cls(min=port_range.lo, max=port_range.hi)


def _policy_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not _POLICY_NAME.match(name):
        raise ValueError(f"policy {name!r} is not a valid Kubernetes object name")
    return name


class AgentSpec(_Model):
    """What the agent checks and fixes on one node; built by the operator.

    Version 1 (no `specVersion`, what earlier operators send) is one policy's own values,
    persisted in its own file. Version 2 is what this operator sends: in Enforce mode the
    composed values of `policies` (`nodesysctl.compose`), persisted in the node's one file
    (`COMPOSED_PERSIST_FILE`, removed when `persist` is off); in Audit mode the policy's own
    values, with no file read or written. An agent older than version 2 refuses a version 2
    spec (`specVersion: Extra inputs are not permitted`) instead of writing the wrong file.
    """

    OMIT_EMPTY = frozenset({"node_port_range", "ephemeral_range", "policies"})

    spec_version: Literal[1, 2] = 1
    policy: Annotated[str, AfterValidator(_policy_name)]
    mode: Mode
    ephemeral_range: PortRangeModel | None = None  # required with narrowRange
    reserved_ranges: list[PortRangeModel] = Field(default_factory=list)
    narrow_range: bool = True
    reserve_ports: bool = True
    persist: bool = True
    persist_file: str = ""  # version 1 only; empty: PERSIST_FILE_PATTERN
    # Which of `reserved_ranges` is the NodePort range (a listener there squats NodePorts);
    # the others are protected ports, whose listeners are their rightful services. None (an
    # operator older than this field, or a composition of policies with different NodePort
    # ranges): every range of more than one port counts as NodePorts, as protected ports are
    # one-port ranges.
    node_port_range: PortRangeModel | None = None
    # Version 2: the Enforce policies whose composition this is (named in the file's header).
    policies: list[Annotated[str, AfterValidator(_policy_name)]] = Field(default_factory=list)

    @field_validator("persist_file")
    @classmethod
    def _plain_conf_file_name(cls, name: str) -> str:
        if name and (len(name) > 255 or not _PERSIST_FILE.match(name)):
            raise ValueError(
                f"persistFile {name!r} must be a plain file name ending in .conf "
                "(letters, digits, '.', '_', '-'; no directories)"
            )
        return name

    @model_validator(mode="after")
    def _leaves_ephemeral_ports(self) -> Self:
        if self.narrow_range and self.ephemeral_range is None:
            raise ValueError("ephemeralRange is required when narrowRange is true")
        # Reserving every port of the ephemeral range would leave the node unable to connect out.
        wanted = [r.to_range() for r in self.reserved_ranges]
        if (
            self.reserve_ports
            and self.ephemeral_range is not None
            and contains_all(wanted, [self.ephemeral_range.to_range()])
        ):
            raise ValueError("reservedRanges cover the whole ephemeralRange")
        return self

    @model_validator(mode="after")
    def _versioned_fields(self) -> Self:
        if self.spec_version == 1 and self.policies:
            raise ValueError("policies needs specVersion 2")
        if self.spec_version == 2 and self.persist_file:
            raise ValueError(f"persistFile is fixed in specVersion 2 ({COMPOSED_PERSIST_FILE})")
        return self

    def omitted(self) -> tuple[str, ...]:
        """A version 1 spec serializes exactly as version 1 did (an older agent reads it)."""
        return ("spec_version",) if self.spec_version == 1 else ("persist_file",)

    @property
    def composed(self) -> bool:
        """Whether this run manages the node's one composed file (version 2, Enforce)."""
        return self.spec_version >= SPEC_VERSION and self.mode is Mode.ENFORCE

    @property
    def persist_file_name(self) -> str:
        if self.spec_version >= SPEC_VERSION:
            return COMPOSED_PERSIST_FILE
        return self.persist_file or PERSIST_FILE_PATTERN.format(policy=self.policy)

    @property
    def legacy_persist_file_name(self) -> str:
        return LEGACY_PERSIST_FILE_PATTERN.format(policy=self.policy)

    @property
    def ephemeral(self) -> PortRange:
        """The allowed range (only with narrowRange, which requires it)."""
        if self.ephemeral_range is None:
            raise ValueError("no ephemeralRange: this spec does not narrow the range")
        return self.ephemeral_range.to_range()

    @property
    def reserved(self) -> tuple[PortRange, ...]:
        return tuple(r.to_range() for r in self.reserved_ranges)

    @property
    def node_ports(self) -> tuple[PortRange, ...]:
        if self.node_port_range is not None:
            return (self.node_port_range.to_range(),)
        return tuple(r for r in self.reserved if r.lo != r.hi)

    @property
    def protected(self) -> tuple[PortRange, ...]:
        """The reserved ranges that are protected ports (not the NodePort range)."""
        node_ports = set(self.node_ports)
        return tuple(r for r in self.reserved if r not in node_ports)


class _ResultModel(_Model):
    # A newer agent may add fields; an older operator must still read the result.
    model_config = ConfigDict(extra="ignore")


class SysctlState(_ResultModel):
    """The node's values at one point in time; null means it could not be read or parsed."""

    ip_local_port_range: PortRangeModel | None = None
    ip_local_reserved_ports: str | None = None  # normalised, as the kernel prints it
    persisted: bool = False  # the persistence file holds exactly these values (survives reboot)

    @field_validator("ip_local_reserved_ports")
    @classmethod
    def _clip_reserved(cls, text: str | None) -> str | None:
        return None if text is None else clip(text, MAX_RESERVED_TEXT_CHARS)


class ConflictingSocket(_ResultModel):
    """A socket whose local port is inside a range the policy reserves and that is not the
    rightful service of a protected port (see `nodesysctl.agent.sockets.SocketKind`)."""

    OMIT_EMPTY = frozenset({"kind", "remote_address", "remote_port"})

    proto: str  # tcp | tcp6 | udp | udp6
    local_address: str
    port: int
    state: str  # LISTEN, ESTABLISHED, TIME_WAIT, ... (UNCONN for unconnected UDP)
    kind: str = ""  # NodePortListener | EphemeralUse; empty from agents before the kinds
    remote_address: str = ""  # connections only
    remote_port: int = 0


class BootOverride(_ResultModel):
    """A file that would set one of our keys, at boot, to a value the policy does not allow."""

    OMIT_EMPTY = frozenset({"value"})

    file: str  # the host path: /etc/sysctl.d/zzz-tuning.conf
    key: str  # net.ipv4.ip_local_port_range
    # What the file sets; null: it removes the key's assignment (`-key`), or it is a file by
    # our file's name in a higher-priority directory, which replaces ours whole.
    value: str | None = None

    @field_validator("file")
    @classmethod
    def _clip_file(cls, text: str) -> str:
        return clip(text, MAX_PATH_CHARS)

    @field_validator("key")
    @classmethod
    def _clip_key(cls, text: str) -> str:
        return clip(text, 64)

    @field_validator("value")
    @classmethod
    def _clip_value(cls, text: str | None) -> str | None:
        return None if text is None else clip(text, MAX_VALUE_CHARS)


class AgentResultError(ValueError):
    """A termination message that is not an `AgentResult`."""


class AgentResult(_ResultModel):
    OMIT_EMPTY = frozenset(
        {"service_socket_count", "boot_overrides", "boot_override_count", "warnings"}
    )

    policy: str
    node: str = ""
    mode: Mode | None = None  # null only when the spec itself was unreadable
    status: Status
    before: SysctlState = Field(default_factory=SysctlState)
    after: SysctlState = Field(default_factory=SysctlState)
    drift: list[str] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    conflicting_sockets: list[ConflictingSocket] = Field(default_factory=list)
    conflicting_socket_count: int = 0
    # Listeners on protected ports and the connections listeners accepted: not conflicts.
    service_socket_count: int = 0
    # Files that would undo the persisted fix at boot (systemd-sysctl order); at most
    # MAX_BOOT_OVERRIDES, `boot_override_count` counts them all.
    boot_overrides: list[BootOverride] = Field(default_factory=list)
    boot_override_count: int = 0
    # Sentences for people about what is neither drift nor an error (a search-path file that
    # could not be read, so the boot-order check is incomplete there).
    warnings: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    agent_version: str = ""
    checked_at: datetime

    @field_validator("policy", "node", "agent_version")
    @classmethod
    def _clip_name(cls, text: str) -> str:
        return clip(text, MAX_NAME_CHARS)

    @field_validator("drift", "actions", "errors", "warnings")
    @classmethod
    def _cap_messages(cls, messages: list[str]) -> list[str]:
        return cap_messages(messages, MAX_MESSAGES, MAX_MESSAGE_CHARS)

    @field_validator("conflicting_sockets")
    @classmethod
    def _cap_sockets(cls, sockets: list[ConflictingSocket]) -> list[ConflictingSocket]:
        return sockets[:MAX_SOCKETS]

    @field_validator("boot_overrides")
    @classmethod
    def _cap_overrides(cls, overrides: list[BootOverride]) -> list[BootOverride]:
        return overrides[:MAX_BOOT_OVERRIDES]

    @field_validator("checked_at")
    @classmethod
    def _utc(cls, when: datetime) -> datetime:
        if when.tzinfo is None:
            raise ValueError("checkedAt must carry a time zone")
        return when.astimezone(UTC)

    @field_serializer("checked_at")
    def _rfc3339(self, when: datetime) -> str:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def exit_code(self) -> int:
        return 1 if self.status is Status.FAILED else 0

    def to_json(self) -> str:
        """One compact JSON line of at most `MAX_RESULT_BYTES` bytes (UTF-8)."""
        result = self
        for shrink in _SHRINK_STEPS:
            text = result.model_dump_json()
            if len(text.encode()) <= MAX_RESULT_BYTES:
                return text
            result = shrink(result)
        text = result.model_dump_json()
        # The last step leaves only bounded fields; this is proven by the worst-case unit test.
        assert len(text.encode()) <= MAX_RESULT_BYTES, len(text.encode())
        return text

    @classmethod
    def parse_termination_message(cls, text: str) -> AgentResult:
        """Read a result back from a termination message (or, as a fallback, its last JSON line).

        Raises `AgentResultError` naming what was wrong and the start of the text.
        """
        stripped = text.strip()
        if not stripped:
            raise AgentResultError("the termination message is empty: the agent wrote no result")
        # With terminationMessagePolicy FallbackToLogsOnError the text is a log tail that ends
        # with the result line; try that line when the whole text is not JSON.
        candidates = [stripped]
        json_lines = [ln for ln in stripped.splitlines() if ln.lstrip().startswith("{")]
        if json_lines and json_lines[-1] != stripped:
            candidates.append(json_lines[-1])
        problems: list[str] = []
        for candidate in candidates:
            try:
                return cls.model_validate_json(candidate)
            except ValidationError as exc:
                problems.append(_describe(exc))
        raise AgentResultError(
            f"not an agent result ({'; '.join(problems)}): {clip(stripped, 200)!r}"
        )


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the text"
    return f"{where}: {first['msg']}"


def _shrink_messages(count: int, chars: int) -> Callable[[AgentResult], AgentResult]:
    def shrink(result: AgentResult) -> AgentResult:
        return result.model_copy(
            update={
                field: cap_messages(getattr(result, field), count, chars)
                for field in ("drift", "actions", "errors", "warnings")
            }
        )

    return shrink


def _shrink_sockets(count: int) -> Callable[[AgentResult], AgentResult]:
    def shrink(result: AgentResult) -> AgentResult:
        return result.model_copy(update={"conflicting_sockets": result.conflicting_sockets[:count]})

    return shrink


def _shrink_overrides(count: int, chars: int) -> Callable[[AgentResult], AgentResult]:
    def shrink(result: AgentResult) -> AgentResult:
        overrides = [
            o.model_copy(
                update={
                    "file": clip(o.file, chars),
                    "key": clip(o.key, chars),
                    "value": None if o.value is None else clip(o.value, chars),
                }
            )
            for o in result.boot_overrides[:count]
        ]
        return result.model_copy(update={"boot_overrides": overrides})

    return shrink


def _shrink_texts(result: AgentResult) -> AgentResult:
    def short(state: SysctlState) -> SysctlState:
        text = state.ip_local_reserved_ports
        return state.model_copy(
            update={"ip_local_reserved_ports": None if text is None else clip(text, 64)}
        )

    return result.model_copy(
        update={
            "before": short(result.before),
            "after": short(result.after),
            "policy": clip(result.policy, 63),
            "node": clip(result.node, 63),
            "agent_version": clip(result.agent_version, 32),
        }
    )


# Tried in order until the result fits. After the last one every string is short enough that
# even 6-byte JSON escapes fit; the first error is always kept.
_SHRINK_STEPS: list[Callable[[AgentResult], AgentResult]] = [
    _shrink_sockets(5),
    _shrink_messages(MAX_MESSAGES, 120),
    _shrink_sockets(0),
    _shrink_overrides(2, 120),
    _shrink_messages(4, 80),
    _shrink_texts,
    _shrink_messages(2, 40),
    _shrink_overrides(1, 40),
]


def parse_spec_json(text: str) -> AgentSpec:
    """Parse the agent's input; raises `ValueError` with a readable, one-line message."""
    try:
        return AgentSpec.model_validate_json(text)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"invalid agent spec: {details}") from exc


def policy_hint(text: str) -> str:
    """The `policy` of a spec that failed validation, if one can be seen, for the result."""
    try:
        raw: Any = json.loads(text)
    except ValueError:
        return ""
    policy = raw.get("policy") if isinstance(raw, dict) else None
    return policy if isinstance(policy, str) else ""
