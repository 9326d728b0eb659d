"""Pydantic models of the NodeSysctlPolicy CRD (`crds/nodesysctlpolicies.yaml`).

The models mirror the CRD's OpenAPI schema: same camelCase names, defaults, bounds and enums, and
every CEL rule (`x-kubernetes-validations`) is repeated with the same message, as a `Rule` of the
model for an object (and its scalar properties) or as a `Check` on a map, a map's values or a
list's items, so the operator rejects whatever slips past an API server (an old CRD, a disabled
validation) with the words a user already saw from `kubectl apply` (`nodesysctl.api_errors`
words pydantic's errors as the API server does). `tests/unit/test_crd.py` keeps the two in sync.

What a policy passes on to Kubernetes (label keys and values, tolerations, PriorityClass names,
resource names and quantities) is checked as Kubernetes checks it, so a policy the API server
accepted never makes a Job it refuses; which image and PriorityClass may run privileged is the
operator's decision, not the schema's (`nodesysctl.admission`).

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from nodesysctl import GROUP, VERSION
from nodesysctl.api_errors import kubernetes_problems, rule_violation
from nodesysctl.labels import LABEL_RESTART_OPT_IN, READINESS_TAINT_PREFIX

API_VERSION = f"{GROUP}/{VERSION}"
# Job names and Node annotation keys (`nodesysctl.io/result.<policy>`, at most 63 characters
# after the prefix) are derived from the policy name.
MAX_POLICY_NAME_LENGTH = 40
# `status.worstNodes` maxItems; `nodesysctl.planning.summarize` keeps at most this many.
MAX_WORST_NODES = 10

_DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes' own syntax checks (k8s.io/apimachinery/pkg/util/validation), written for RE2 (the
# API server's CEL `matches`) and Python alike: `[.]` rather than an escape, so the CRD's YAML
# holds them unchanged; the CRD rules quote them (tests/unit/test_crd.py checks).
# IsValidLabelValue: at most 63 characters (the CRD's maxLength), may be empty.
LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# IsQualifiedName (label keys, toleration keys): an optional DNS-subdomain prefix and "/", then
# a name of 1 to 63 characters; QUALIFIED_NAME_PREFIX_PATTERN bounds the prefix to 253.
QUALIFIED_NAME_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
QUALIFIED_NAME_PREFIX_PATTERN = "^[^/]{1,253}/"
# IsDNS1123Subdomain (PriorityClass names; at most 253 characters, the CRD's maxLength).
DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# corev1's quantity pattern, except that an exponent is an integer, as the API server's parser
# wants it ("1e1.5" matches corev1's pattern and is still refused when a pod is created).
_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
)
_CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
_CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# The CRD rule accepts only this subset of Go's time.ParseDuration syntax, so CEL's duration()
# never sees a string it cannot parse.
_GO_DURATION_PATTERN = re.compile(r"^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$")
_GO_DURATION_PART = re.compile(r"([0-9]+(?:[.][0-9]+)?)(ns|us|ms|s|m|h)")
_GO_DURATION_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MIN_RECHECK_SECONDS = 60.0
_MAX_RECHECK_SECONDS = 168 * 3600.0
_PERCENT_PATTERN = re.compile(r"^(100|[1-9][0-9]?)%$")

ModelT = TypeVar("ModelT")
ItemT = TypeVar("ItemT")


class Mode(StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class RestartMode(StrEnum):
    ON_REMEDIATION = "OnRemediation"
    REPORT = "Report"  # a dry run: plan each wave, report it in the status, restart nothing
    NEVER = "Never"


class RestartPods(StrEnum):
    """Which pods on a remediated node count as affected by its widened port range.

    `net.ipv4.ip_local_port_range` and `ip_local_reserved_ports` are per network namespace, and
    a new namespace starts from the kernel defaults (`inet_init_net`), whatever the host has: a
    pod with its own network namespace never saw the node's range, a `hostNetwork: true` pod
    did."""

    HOST_NETWORK = "HostNetwork"
    ALL = "All"


class WorkloadKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The condition types nodesysctl sets on a policy (Condition.type stays a free string)."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    INVALID = "Invalid"
    CONFLICT = "Conflict"


@dataclass(frozen=True)
class Rule(Generic[ModelT]):
    """One CRD `x-kubernetes-validations` entry, repeated in Python.

    `field_path` and `reason` are the CRD rule's `fieldPath` and `reason`; a rule written on a
    scalar property in the CRD is attached to the parent model here with `field_path=".<prop>"`.
    """

    message: str
    holds: Callable[[ModelT], bool]
    field_path: str = ""
    reason: str = "FieldValueInvalid"


class InvalidPolicy(ValueError):  # noqa: N818 - the name other modules are written against
    """A policy the API server should have refused; `problems` holds one "path: message" each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid NodeSysctlPolicy: " + "; ".join(self.problems))


class _ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class _RuledModel(_ApiModel):
    """A model whose CEL mirrors (`RULES`) run after its fields validated."""

    RULES: ClassVar[tuple[Rule[Any], ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        broken = [rule for rule in self.RULES if not rule.holds(self)]
        if broken:
            raise rule_violation([(rule.field_path, rule.message) for rule in broken])
        return self


def _no_duplicates(items: list[ItemT]) -> list[ItemT]:
    """`x-kubernetes-list-type: set`: the API server refuses repeated items."""
    seen: list[ItemT] = []
    for item in items:
        if item in seen:
            raise PydanticCustomError(
                "duplicate", "Duplicate value: {value}", {"value": json.dumps(item)}
            )
        seen.append(item)
    return items


def _unique_by(key: str) -> Callable[[list[ItemT]], list[ItemT]]:
    """`x-kubernetes-list-type: map`: at most one item per key."""

    def check(items: list[ItemT]) -> list[ItemT]:
        _no_duplicates([getattr(item, key) for item in items])
        return items

    return check


@dataclass(frozen=True)
class Check:
    """A CRD rule on a value no model class stands for (a map, a map's values, a list's strings),
    repeated in Python: `Annotated[T, Check(message, holds)]`.

    It validates like a `Rule` and shows in the models' JSON schema as
    `x-kubernetes-validations: [{message}]`, where the CRD sync test compares it with the CRD.
    """

    message: str
    holds: Callable[[Any], bool]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("x-kubernetes-validations", []).append({"message": self.message})
        return json_schema

    def _validate(self, value: Any) -> Any:
        if not self.holds(value):
            raise rule_violation([("", self.message)])
        return value


def _full_match(pattern: str) -> Callable[[str], bool]:
    """RE2's `matches` with `^...$`: Python's `$` would also accept a trailing newline."""
    compiled = re.compile(pattern)
    return lambda text: compiled.fullmatch(text) is not None


is_label_value = _full_match(LABEL_VALUE_PATTERN)
is_dns_subdomain = _full_match(DNS_SUBDOMAIN_PATTERN)
_is_qualified_shape = _full_match(QUALIFIED_NAME_PATTERN)
_has_short_prefix = re.compile(QUALIFIED_NAME_PREFIX_PATTERN)


def is_qualified_name(text: str) -> bool:
    """A label key: `[prefix/]name`, the prefix a DNS subdomain of at most 253 characters."""
    return _is_qualified_shape(text) and ("/" not in text or bool(_has_short_prefix.match(text)))


# The API server's wording for the label syntax, shared by every rule that checks it.
LABEL_KEY_RULE = (
    "must be a label key: an optional DNS subdomain prefix (at most 253 characters) and '/', "
    "then a name of at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit"
)
LABEL_VALUE_RULE = (
    "must be a label value: empty, or at most 63 letters, digits, '-', '_' or '.', starting "
    "and ending with a letter or digit"
)


# Kubernetes quantities (k8s.io/apimachinery/pkg/api/resource): a decimal number, then a binary
# (Ki..Ei) or decimal (n..E) suffix or an exponent.
_QUANTITY_PARTS = re.compile(
    r"([+-]?(?:[0-9]+(?:[.][0-9]*)?|[.][0-9]+))((?:[KMGTPE]i)|[numkMGTPE]|(?:[eE][+-]?[0-9]+))?"
)
_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def quantity_value(quantity: int | str) -> Decimal:
    """The exact value of a quantity the CRD's pattern accepts ("500m" is 0.5, "1Ki" 1024)."""
    if isinstance(quantity, int):
        return Decimal(quantity)
    found = _QUANTITY_PARTS.fullmatch(quantity)
    if found is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    number, suffix = Decimal(found.group(1)), found.group(2) or ""
    if suffix in _BINARY_SUFFIXES:
        return number * Decimal(1024) ** _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return number.scaleb(_DECIMAL_SUFFIXES[suffix])
    return number.scaleb(int(Decimal(suffix[1:]))) if suffix else number


def _is_quantity(value: int | str) -> bool:
    return isinstance(value, int) or _QUANTITY_PARTS.fullmatch(value) is not None


_SET_LIST: dict[str, Any] = {"x-kubernetes-list-type": "set"}
_ATOMIC_LIST: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}
_MAP_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map"}

Port = Annotated[StrictInt, Field(ge=1, le=65535)]
LabelValue = Annotated[
    StrictStr, Field(max_length=63), Check(f"values {LABEL_VALUE_RULE}", is_label_value)
]
Quantity = StrictInt | Annotated[StrictStr, Field(pattern=_QUANTITY_PATTERN)]
DnsLabel = Annotated[StrictStr, Field(max_length=63, pattern=_DNS_LABEL_PATTERN)]


# --- spec ---------------------------------------------------------------------------------------


class PortRangeSpec(_RuledModel):
    """An inclusive port range as a policy writes it (`{min, max}`); the range math the agent
    does is `nodesysctl.ports.PortRange`'s."""

    min: Port
    max: Port

    RULES: ClassVar[tuple[Rule[PortRangeSpec], ...]] = (
        Rule("min must not be greater than max", lambda r: r.min <= r.max),
    )

    def contains(self, port: int) -> bool:
        return self.min <= port <= self.max

    def overlaps(self, other: PortRangeSpec) -> bool:
        return self.min <= other.max and other.min <= self.max


class PortsSpec(_RuledModel):
    ephemeral_range: PortRangeSpec = PortRangeSpec(min=32768, max=60999)
    node_port_range: PortRangeSpec = PortRangeSpec(min=30000, max=32767)
    protected_ports: Annotated[
        list[Port],
        AfterValidator(_no_duplicates),
        Field(max_length=64, json_schema_extra=_SET_LIST),
    ] = []

    RULES: ClassVar[tuple[Rule[PortsSpec], ...]] = (
        Rule(
            "ephemeralRange must not overlap nodePortRange: host connections would take "
            "source ports that NodePort Services own",
            lambda p: not p.ephemeral_range.overlaps(p.node_port_range),
            field_path=".ephemeralRange",
        ),
        Rule(
            "ephemeralRange.min must be at least 1024, ports below are for host services",
            lambda p: p.ephemeral_range.min >= 1024,
            field_path=".ephemeralRange",
        ),
        Rule(
            "ephemeralRange must span at least 1000 ports, fewer starves outgoing connections",
            lambda p: p.ephemeral_range.max - p.ephemeral_range.min >= 999,
            field_path=".ephemeralRange",
        ),
    )

    def reserved_ranges(self) -> list[PortRangeSpec]:
        """What `reservePorts` merges into ip_local_reserved_ports: the NodePort range, then
        each protected port as a one-port range."""
        return [self.node_port_range] + [
            PortRangeSpec(min=port, max=port) for port in self.protected_ports
        ]


# Where a persisted file survives a reboot and belongs to the node's admin (sysctl.d(5)); the
# Job mounts it. Not /run/sysctl.d (a tmpfs, empty at boot), not /usr/lib/sysctl.d or
# /lib/sysctl.d (the OS vendor's, read-only on image-based systems), nothing else: the policy
# writer chooses which host directory a privileged pod may write.
SYSCTL_DIRS = ("/etc/sysctl.d", "/usr/local/lib/sysctl.d")


class RemediationSpec(_RuledModel):
    mode: Mode = Mode.ENFORCE
    narrow_range: StrictBool = True
    reserve_ports: StrictBool = True
    persist: StrictBool = True
    sysctl_dir: Annotated[StrictStr, Field(max_length=255)] = "/etc/sysctl.d"

    RULES: ClassVar[tuple[Rule[RemediationSpec], ...]] = (
        Rule(
            "at least one of narrowRange and reservePorts must be true, otherwise there is "
            "nothing to enforce",
            lambda r: r.narrow_range or r.reserve_ports,
        ),
        Rule(
            "sysctlDir must be /etc/sysctl.d or /usr/local/lib/sysctl.d, the admin's directories "
            "that survive a reboot (/run/sysctl.d is emptied at boot, /usr/lib/sysctl.d and "
            "/lib/sysctl.d belong to the OS vendor)",
            lambda r: r.sysctl_dir in SYSCTL_DIRS,
            field_path=".sysctlDir",
        ),
    )

    def writes_host_files(self) -> bool:
        """Whether the agent writes into sysctlDir: only in Enforce mode with persist."""
        return self.mode is Mode.ENFORCE and self.persist


def _go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration such as "1h30m", or None if it is not in the accepted syntax."""
    if not _GO_DURATION_PATTERN.match(text):
        return None
    return sum(
        float(number) * _GO_DURATION_UNIT_SECONDS[unit]
        for number, unit in _GO_DURATION_PART.findall(text)
    )


def _is_valid_recheck_interval(text: str) -> bool:
    seconds = _go_duration_seconds(text)
    return seconds is not None and _MIN_RECHECK_SECONDS <= seconds <= _MAX_RECHECK_SECONDS


def _is_valid_max_concurrent(value: int | str) -> bool:
    if isinstance(value, int):
        return value >= 1
    return _PERCENT_PATTERN.match(value) is not None


class Weekday(StrEnum):
    MONDAY = "Monday"
    TUESDAY = "Tuesday"
    WEDNESDAY = "Wednesday"
    THURSDAY = "Thursday"
    FRIDAY = "Friday"
    SATURDAY = "Saturday"
    SUNDAY = "Sunday"

    @property
    def iso_number(self) -> int:
        """ISO 8601's weekday number (`date.isoweekday`): Monday is 1."""
        return list(Weekday).index(self) + 1


# HH:MM on a 24-hour clock, as kured's --start-time and system-upgrade-controller's window.
_WALL_TIME_PATTERN = "^([01][0-9]|2[0-3]):[0-5][0-9]$"
# The shape of an IANA zone name (tz database names: "UTC", "Europe/Berlin",
# "America/Argentina/Buenos_Aires", "Etc/GMT+5"). Whether the zone exists only the operator's
# tz database can tell (`_is_known_zone`), not CEL.
_TIME_ZONE_PATTERN = "^[A-Za-z][-A-Za-z0-9_+]*(/[A-Za-z0-9][-A-Za-z0-9_+]*)*$"


def _is_known_zone(name: str) -> str:
    """The operator's tz database must know the zone, else the window cannot be computed; a
    shape the CRD admits and the database lacks makes the policy Invalid (reported once)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "unknown_time_zone",
            "Invalid value: {value}: timeZone must be an IANA time zone name the operator's tz "
            "database knows, such as UTC or Europe/Berlin",
            {"value": json.dumps(name)},
        ) from None
    return name


class MaintenanceWindow(_RuledModel):
    """When a policy may act (`rollout.window`: Enforce fixes; `restart.window`: restart waves):
    on `days`, from `start` to `end` local time in `timeZone`; an `end` earlier than `start`
    crosses midnight into the next day (`nodesysctl.windows` does the arithmetic)."""

    days: Annotated[
        list[Weekday],
        AfterValidator(_no_duplicates),
        Field(min_length=1, max_length=7, json_schema_extra=_SET_LIST),
    ] = list(Weekday)
    start: Annotated[StrictStr, Field(max_length=5, pattern=_WALL_TIME_PATTERN)]
    end: Annotated[StrictStr, Field(max_length=5, pattern=_WALL_TIME_PATTERN)]
    time_zone: Annotated[
        StrictStr,
        Field(max_length=64, pattern=_TIME_ZONE_PATTERN),
        AfterValidator(_is_known_zone),
    ] = "UTC"

    RULES: ClassVar[tuple[Rule[MaintenanceWindow], ...]] = (
        Rule(
            "start and end must differ: a window of no length never opens (leave the window "
            "out to act at any time)",
            lambda w: w.start != w.end,
            field_path=".end",
        ),
    )

    def start_time(self) -> time:
        return time.fromisoformat(self.start)

    def end_time(self) -> time:
        return time.fromisoformat(self.end)


class RolloutSpec(_RuledModel):
    max_concurrent: StrictInt | StrictStr = "25%"
    max_failed_nodes: Annotated[StrictInt, Field(ge=1)] = 1
    recheck_interval: Annotated[StrictStr, Field(max_length=32)] = "1h"
    # Enforce fixes only inside it (outside, checks only report drift); None: at any time.
    window: MaintenanceWindow | None = None

    RULES: ClassVar[tuple[Rule[RolloutSpec], ...]] = (
        Rule(
            "maxConcurrent must be a positive integer or a percentage from 1% to 100%",
            lambda r: _is_valid_max_concurrent(r.max_concurrent),
            field_path=".maxConcurrent",
        ),
        Rule(
            "recheckInterval must be a Go duration from 1m to 168h, such as 30m or 1h",
            lambda r: _is_valid_recheck_interval(r.recheck_interval),
            field_path=".recheckInterval",
        ),
    )

    def max_concurrent_for(self, matched_nodes: int) -> int:
        """Nodes to work on at once; a percentage of matched nodes rounds down, never below 1."""
        if isinstance(self.max_concurrent, int):
            return max(1, self.max_concurrent)
        percent = int(self.max_concurrent.removesuffix("%"))
        return max(1, matched_nodes * percent // 100)

    def recheck_interval_seconds(self) -> float:
        seconds = _go_duration_seconds(self.recheck_interval)
        if seconds is None:  # unreachable for a validated model; keeps the type honest
            raise ValueError(f"recheckInterval {self.recheck_interval!r} is not a Go duration")
        return seconds


class LabelSelectorRequirement(_RuledModel):
    key: Annotated[StrictStr, Field(min_length=1, max_length=317)]
    operator: SelectorOperator
    values: Annotated[
        list[LabelValue],
        Field(max_length=64, json_schema_extra=_ATOMIC_LIST),
    ] = []

    RULES: ClassVar[tuple[Rule[LabelSelectorRequirement], ...]] = (
        Rule(f"key {LABEL_KEY_RULE}", lambda r: is_qualified_name(r.key), field_path=".key"),
        Rule(
            "values must be non-empty when operator is In or NotIn",
            lambda r: (
                r.operator not in (SelectorOperator.IN, SelectorOperator.NOT_IN)
                or len(r.values) > 0
            ),
            field_path=".values",
            reason="FieldValueRequired",
        ),
        Rule(
            "values must be empty when operator is Exists or DoesNotExist",
            lambda r: (
                r.operator not in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST)
                or len(r.values) == 0
            ),
            field_path=".values",
            reason="FieldValueForbidden",
        ),
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.operator:
            case SelectorOperator.IN:
                return self.key in labels and labels[self.key] in self.values
            case SelectorOperator.NOT_IN:
                return self.key not in labels or labels[self.key] not in self.values
            case SelectorOperator.EXISTS:
                return self.key in labels
            case SelectorOperator.DOES_NOT_EXIST:
                return self.key not in labels


class LabelSelector(_ApiModel):
    """metav1.LabelSelector; the empty selector matches everything."""

    match_labels: Annotated[
        dict[str, LabelValue],
        Field(max_length=64),
        Check(f"keys {LABEL_KEY_RULE}", lambda labels: all(map(is_qualified_name, labels))),
    ] = {}
    match_expressions: Annotated[
        list[LabelSelectorRequirement], Field(max_length=32, json_schema_extra=_ATOMIC_LIST)
    ] = []

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


DEFAULT_RESTART_SELECTOR = LabelSelector(match_labels={LABEL_RESTART_OPT_IN: "true"})


# Per policy, on top of the operator's cluster-wide --restarts-per-minute: rollout restarts and
# evictions per hour (a token bucket that holds this many; its state is in the policy status).
DEFAULT_RESTARTS_PER_HOUR = 60
MAX_RESTARTS_PER_HOUR = 10000


class RestartSpec(_ApiModel):
    mode: RestartMode = RestartMode.ON_REMEDIATION
    pods: RestartPods = RestartPods.HOST_NETWORK
    kinds: Annotated[
        list[WorkloadKind],
        AfterValidator(_no_duplicates),
        Field(min_length=1, max_length=3, json_schema_extra=_SET_LIST),
    ] = [WorkloadKind.DEPLOYMENT]
    # Opt-in by label by default: an explicit `selector: {}` is needed to restart everything.
    selector: LabelSelector = DEFAULT_RESTART_SELECTOR
    namespaces: Annotated[
        list[DnsLabel],
        AfterValidator(_no_duplicates),
        Field(max_length=64, json_schema_extra=_SET_LIST),
    ] = []
    max_per_hour: Annotated[StrictInt, Field(ge=1, le=MAX_RESTARTS_PER_HOUR)] = (
        DEFAULT_RESTARTS_PER_HOUR
    )
    # Restart waves only inside it (a wave the end cuts goes on at the next opening); None: at
    # any time.
    window: MaintenanceWindow | None = None


class Toleration(_RuledModel):
    """corev1.Toleration."""

    key: Annotated[StrictStr, Field(max_length=317)] | None = None
    operator: TolerationOperator | None = None
    value: Annotated[StrictStr, Field(max_length=63)] | None = None
    effect: TaintEffect | None = None
    toleration_seconds: StrictInt | None = None

    RULES: ClassVar[tuple[Rule[Toleration], ...]] = (
        Rule(
            f"a toleration key, when set, {LABEL_KEY_RULE}",
            lambda t: not t.key or is_qualified_name(t.key),
            field_path=".key",
        ),
        Rule(
            f"a toleration value {LABEL_VALUE_RULE}",
            lambda t: t.value is None or is_label_value(t.value),
            field_path=".value",
        ),
        Rule(
            "a toleration with operator Exists must not set value",
            lambda t: t.operator != TolerationOperator.EXISTS or not t.value,
            field_path=".value",
            reason="FieldValueForbidden",
        ),
        Rule(
            "a toleration without a key must use operator Exists",
            lambda t: bool(t.key) or t.operator == TolerationOperator.EXISTS,
            field_path=".operator",
        ),
        Rule(
            "tolerationSeconds is only valid with effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == TaintEffect.NO_EXECUTE,
            field_path=".tolerationSeconds",
            reason="FieldValueForbidden",
        ),
    )


# What a policy may give the agent container: it runs on every selected node at once, so a large
# request would take room (or, with a priority class, evict) the node's workloads everywhere.
# The agent needs about 10m and 32Mi (`nodesysctl.jobs.DEFAULT_AGENT_RESOURCES`).
MAX_AGENT_CPU = "1"
MAX_AGENT_MEMORY = "512Mi"


def _within(value: Quantity | None, most: str) -> bool:
    """CEL: `!isQuantity(q) || (quantity(q) >= 0 && quantity(q) <= most)`; a string that is no
    quantity is the pattern's to refuse."""
    if value is None or not _is_quantity(value):
        return True
    return Decimal(0) <= quantity_value(value) <= quantity_value(most)


class ResourceList(_RuledModel):
    """corev1.ResourceList, cpu and memory only: the agent needs nothing else."""

    cpu: Quantity | None = None
    memory: Quantity | None = None

    RULES: ClassVar[tuple[Rule[ResourceList], ...]] = (
        Rule(
            f"cpu must be from 0 to {MAX_AGENT_CPU}: the agent needs about 10m, and it runs on "
            "every selected node",
            lambda r: _within(r.cpu, MAX_AGENT_CPU),
            field_path=".cpu",
        ),
        Rule(
            f"memory must be from 0 to {MAX_AGENT_MEMORY}: the agent needs about 32Mi, and it runs "
            "on every selected node",
            lambda r: _within(r.memory, MAX_AGENT_MEMORY),
            field_path=".memory",
        ),
    )


def _request_within_limit(requests: Quantity | None, limits: Quantity | None) -> bool:
    if requests is None or limits is None or not (_is_quantity(requests) and _is_quantity(limits)):
        return True
    return quantity_value(requests) <= quantity_value(limits)


class ResourceRequirements(_RuledModel):
    """corev1.ResourceRequirements (limits and requests only)."""

    limits: ResourceList = ResourceList()
    requests: ResourceList = ResourceList()

    RULES: ClassVar[tuple[Rule[ResourceRequirements], ...]] = (
        Rule(
            "requests.cpu must not be greater than limits.cpu",
            lambda r: _request_within_limit(r.requests.cpu, r.limits.cpu),
            field_path=".requests.cpu",
        ),
        Rule(
            "requests.memory must not be greater than limits.memory",
            lambda r: _request_within_limit(r.requests.memory, r.limits.memory),
            field_path=".requests.memory",
        ),
    )


class JobSpec(_RuledModel):
    # Only images in the operator's --allowed-agent-images run (`nodesysctl.admission`).
    image: Annotated[StrictStr, Field(max_length=512)] = ""
    tolerations: Annotated[
        list[Toleration], Field(max_length=32, json_schema_extra=_ATOMIC_LIST)
    ] = []
    # Only classes in the operator's --allowed-priority-classes (`nodesysctl.admission`).
    priority_class_name: Annotated[StrictStr, Field(max_length=253)] = ""
    resources: ResourceRequirements = ResourceRequirements()
    active_deadline_seconds: Annotated[StrictInt, Field(ge=10, le=3600)] = 120
    backoff_limit: Annotated[StrictInt, Field(ge=0, le=6)] = 1
    # At least a minute so the operator reads the agent's result before the Job is collected.
    ttl_seconds_after_finished: Annotated[StrictInt, Field(ge=60, le=604800)] = 600

    RULES: ClassVar[tuple[Rule[JobSpec], ...]] = (
        Rule(
            "priorityClassName must be empty or a PriorityClass name: a DNS subdomain of "
            "lowercase letters, digits, '-' and '.'",
            lambda j: not j.priority_class_name or is_dns_subdomain(j.priority_class_name),
            field_path=".priorityClassName",
        ),
    )


class ReadinessSpec(_RuledModel):
    """The readiness taint a policy clears (`spec.readiness`): nodes register with it (kubelet
    `--register-with-taints`, a node pool's taints, Karpenter `startupTaints`) and the operator
    removes it once every policy that selects the node and names it has verified the node for
    its current spec and boot (`nodesysctl.readiness`)."""

    key: Annotated[StrictStr, Field(max_length=317)] = READINESS_TAINT_PREFIX
    effect: Literal[TaintEffect.NO_SCHEDULE, TaintEffect.NO_EXECUTE] = TaintEffect.NO_SCHEDULE
    # Put the taint back (NoSchedule) when the node boots again, until the recheck passes.
    retaint_on_reboot: StrictBool = False

    RULES: ClassVar[tuple[Rule[ReadinessSpec], ...]] = (
        Rule(
            f"a readiness taint key {LABEL_KEY_RULE}",
            lambda r: is_qualified_name(r.key),
            field_path=".key",
        ),
        Rule(
            f"a readiness taint key must start with {READINESS_TAINT_PREFIX}: the admission "
            "fence lets the operator change only the taints under that prefix",
            lambda r: r.key.startswith(READINESS_TAINT_PREFIX),
            field_path=".key",
        ),
        Rule(
            "retaintOnReboot needs effect NoSchedule: a NoExecute taint put back at every boot "
            "would evict every pod that does not tolerate it",
            lambda r: not r.retaint_on_reboot or r.effect == TaintEffect.NO_SCHEDULE,
            field_path=".retaintOnReboot",
            reason="FieldValueForbidden",
        ),
    )


def _protected_ports_are_kept_out(spec: NodeSysctlPolicySpec) -> bool:
    ephemeral = spec.ports.ephemeral_range
    return spec.remediation.reserve_ports or not any(
        ephemeral.contains(port) for port in spec.ports.protected_ports
    )


class NodeSysctlPolicySpec(_RuledModel):
    node_selector: LabelSelector = LabelSelector()
    ports: PortsSpec = PortsSpec()
    remediation: RemediationSpec = RemediationSpec()
    rollout: RolloutSpec = RolloutSpec()
    restart: RestartSpec | None = None
    job: JobSpec = JobSpec()
    readiness: ReadinessSpec | None = None  # omitted: no taint is ever touched

    RULES: ClassVar[tuple[Rule[NodeSysctlPolicySpec], ...]] = (
        Rule(
            "protectedPorts inside ephemeralRange need remediation.reservePorts: true, "
            "otherwise the kernel can still hand them out as source ports",
            _protected_ports_are_kept_out,
            field_path=".ports.protectedPorts",
            reason="FieldValueForbidden",
        ),
    )


# --- status -------------------------------------------------------------------------------------


class _StatusModel(BaseModel):
    # Status is written by the operator and by Kopf (`status.kopf`): ignore what is not ours.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_StatusModel):
    """metav1.Condition."""

    type: Annotated[StrictStr, Field(max_length=316, pattern=_CONDITION_TYPE_PATTERN)]
    status: ConditionStatus
    observed_generation: Annotated[StrictInt, Field(ge=0)] | None = None
    last_transition_time: datetime
    reason: Annotated[
        StrictStr, Field(min_length=1, max_length=1024, pattern=_CONDITION_REASON_PATTERN)
    ]
    message: Annotated[StrictStr, Field(max_length=32768)]


class WorstNodeStatus(_StatusModel):
    """One entry of `status.worstNodes`, written from a `nodesysctl.planning.WorstNode`."""

    name: Annotated[StrictStr, Field(max_length=253)]
    state: Annotated[StrictStr, Field(max_length=32)]
    message: Annotated[StrictStr, Field(max_length=1024)] = ""


# `status.restartWave.steps` and `status.lastRestart.notRestarted` list at most this many.
MAX_LISTED_STEPS = 20


class RestartStepStatus(_StatusModel):
    """One workload (or DaemonSet pod) of a restart wave: what the wave does with it, and why."""

    workload: Annotated[StrictStr, Field(max_length=512)]
    action: Annotated[StrictStr, Field(max_length=32)]
    reason: Annotated[StrictStr, Field(max_length=512)] = ""


class LastRestart(_StatusModel):
    """The last completed restart wave: which workloads were restarted after which checks."""

    wave: Annotated[StrictStr, Field(max_length=64)]
    at: Annotated[StrictStr, Field(max_length=64)]
    nodes: Annotated[StrictInt, Field(ge=0)] = 0
    count: Annotated[StrictInt, Field(ge=0)] = 0
    evicted: Annotated[StrictInt, Field(ge=0)] = 0
    report: StrictBool = False
    workloads: Annotated[
        list[Annotated[StrictStr, Field(max_length=512)]], Field(max_length=10)
    ] = []
    not_restarted: Annotated[
        list[RestartStepStatus], Field(max_length=MAX_LISTED_STEPS, json_schema_extra=_ATOMIC_LIST)
    ] = []


class RestartWaveStatus(_StatusModel):
    """The wave planned and not complete yet (rate limit, budget, a retried eviction): what it
    does with each workload, and why."""

    wave: Annotated[StrictStr, Field(max_length=64)]
    mode: Annotated[StrictStr, Field(max_length=32)]
    nodes: Annotated[StrictInt, Field(ge=0)] = 0
    remaining: Annotated[StrictInt, Field(ge=0)] = 0
    counts: Annotated[dict[str, Annotated[StrictInt, Field(ge=0)]], Field(max_length=16)] = {}
    steps: Annotated[
        list[RestartStepStatus], Field(max_length=MAX_LISTED_STEPS, json_schema_extra=_ATOMIC_LIST)
    ] = []


class RestartBudgetStatus(_StatusModel):
    """The per-policy restart budget (`spec.restart.maxPerHour`), kept here so that a restarted
    operator, or a standby taking over, does not start with a full one."""

    per_hour: Annotated[StrictInt, Field(ge=1)]
    remaining: Annotated[StrictInt, Field(ge=0)] = 0
    full_at: Annotated[StrictStr, Field(max_length=64)]


class NodeSysctlPolicyStatus(_StatusModel):
    observed_generation: Annotated[StrictInt, Field(ge=0)] | None = None
    conditions: Annotated[
        list[Condition],
        AfterValidator(_unique_by("type")),
        Field(max_length=16, json_schema_extra=_MAP_LIST),
    ] = []
    nodes: Annotated[StrictInt, Field(ge=0)] = 0
    compliant: Annotated[StrictInt, Field(ge=0)] = 0
    drifted: Annotated[StrictInt, Field(ge=0)] = 0
    failed: Annotated[StrictInt, Field(ge=0)] = 0
    pending: Annotated[StrictInt, Field(ge=0)] = 0
    waiting: Annotated[StrictInt, Field(ge=0)] = 0
    worst_nodes: Annotated[
        list[WorstNodeStatus],
        AfterValidator(_unique_by("name")),
        Field(max_length=MAX_WORST_NODES, json_schema_extra=_MAP_LIST),
    ] = []
    last_restart: LastRestart | None = None
    restart_wave: RestartWaveStatus | None = None
    restart_budget: RestartBudgetStatus | None = None


# --- the whole object ---------------------------------------------------------------------------


class PolicyMetadata(BaseModel):
    """The part of ObjectMeta nodesysctl reads; the rest (labels, uid, ...) passes through."""

    model_config = ConfigDict(extra="allow")

    name: StrictStr


class NodeSysctlPolicy(_RuledModel):
    api_version: Literal["nodesysctl.io/v1alpha1"] = "nodesysctl.io/v1alpha1"
    kind: Literal["NodeSysctlPolicy"] = "NodeSysctlPolicy"
    metadata: PolicyMetadata
    spec: NodeSysctlPolicySpec
    status: NodeSysctlPolicyStatus | None = None

    RULES: ClassVar[tuple[Rule[NodeSysctlPolicy], ...]] = (
        Rule(
            f"metadata.name must be at most {MAX_POLICY_NAME_LENGTH} characters: nodesysctl "
            "derives Job names and Node annotation keys from it",
            lambda p: len(p.metadata.name) <= MAX_POLICY_NAME_LENGTH,
        ),
    )


# --- parsing with user-facing messages ----------------------------------------------------------


def parse_spec(spec: Mapping[str, Any]) -> NodeSysctlPolicySpec:
    """Validate a policy's `spec`; raise InvalidPolicy listing every problem."""
    try:
        return NodeSysctlPolicySpec.model_validate(spec)
    except ValidationError as error:
        raise InvalidPolicy(kubernetes_problems(error, prefix=("spec",))) from None


def parse_policy(manifest: Mapping[str, Any]) -> NodeSysctlPolicy:
    """Validate a whole NodeSysctlPolicy object (apiVersion, kind, metadata.name and spec)."""
    try:
        return NodeSysctlPolicy.model_validate(manifest)
    except ValidationError as error:
        raise InvalidPolicy(kubernetes_problems(error, prefix=())) from None
