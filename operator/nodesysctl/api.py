"""Pydantic models of the NodeSysctlPolicy CRD (`crds/nodesysctlpolicies.yaml`).

The models mirror the CRD's OpenAPI schema: same camelCase names, defaults, bounds and enums, and
every CEL rule (`x-kubernetes-validations`) is repeated as a `Rule` with the same message, so the
operator rejects whatever slips past an API server (an old CRD, a disabled validation) with the
words a user already saw from `kubectl apply` (`nodesysctl.api_errors` words pydantic's errors
as the API server does). `tests/unit/test_crd.py` keeps the two in sync.

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from nodesysctl import GROUP, VERSION
from nodesysctl.api_errors import kubernetes_problems, rule_violation
from nodesysctl.labels import LABEL_RESTART_OPT_IN

API_VERSION = f"{GROUP}/{VERSION}"
# Job names and Node annotation keys (`nodesysctl.io/result.<policy>`, at most 63 characters
# after the prefix) are derived from the policy name.
MAX_POLICY_NAME_LENGTH = 40
# `status.worstNodes` maxItems; `nodesysctl.planning.summarize` keeps at most this many.
MAX_WORST_NODES = 10

_LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN_OR_EMPTY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
)
_QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
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
    NEVER = "Never"


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


_SET_LIST: dict[str, Any] = {"x-kubernetes-list-type": "set"}
_ATOMIC_LIST: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}
_MAP_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map"}

Port = Annotated[StrictInt, Field(ge=1, le=65535)]
LabelValue = Annotated[StrictStr, Field(max_length=63, pattern=_LABEL_VALUE_PATTERN)]
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


def _is_absolute_non_root(path: str) -> bool:
    return path.startswith("/") and path != "/"


def _has_dot_dot_segment(path: str) -> bool:
    return ".." in path.split("/")


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
            "sysctlDir must be an absolute path other than /",
            lambda r: _is_absolute_non_root(r.sysctl_dir),
            field_path=".sysctlDir",
        ),
        Rule(
            "sysctlDir must not contain a '..' segment",
            lambda r: not _has_dot_dot_segment(r.sysctl_dir),
            field_path=".sysctlDir",
        ),
    )


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


class RolloutSpec(_RuledModel):
    max_concurrent: StrictInt | StrictStr = "25%"
    max_failed_nodes: Annotated[StrictInt, Field(ge=1)] = 1
    recheck_interval: Annotated[StrictStr, Field(max_length=32)] = "1h"

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
        list[Annotated[StrictStr, Field(max_length=63)]],
        Field(max_length=64, json_schema_extra=_ATOMIC_LIST),
    ] = []

    RULES: ClassVar[tuple[Rule[LabelSelectorRequirement], ...]] = (
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

    match_labels: Annotated[dict[str, LabelValue], Field(max_length=64)] = {}
    match_expressions: Annotated[
        list[LabelSelectorRequirement], Field(max_length=32, json_schema_extra=_ATOMIC_LIST)
    ] = []

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


DEFAULT_RESTART_SELECTOR = LabelSelector(match_labels={LABEL_RESTART_OPT_IN: "true"})


class RestartSpec(_ApiModel):
    mode: RestartMode = RestartMode.ON_REMEDIATION
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


class Toleration(_RuledModel):
    """corev1.Toleration."""

    key: Annotated[StrictStr, Field(max_length=317)] | None = None
    operator: TolerationOperator | None = None
    value: Annotated[StrictStr, Field(max_length=63)] | None = None
    effect: TaintEffect | None = None
    toleration_seconds: StrictInt | None = None

    RULES: ClassVar[tuple[Rule[Toleration], ...]] = (
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


class ResourceRequirements(_ApiModel):
    """corev1.ResourceRequirements (limits and requests only)."""

    limits: Annotated[dict[str, Quantity], Field(max_length=16)] = {}
    requests: Annotated[dict[str, Quantity], Field(max_length=16)] = {}


class JobSpec(_ApiModel):
    image: Annotated[StrictStr, Field(max_length=512)] = ""
    tolerations: Annotated[
        list[Toleration], Field(max_length=32, json_schema_extra=_ATOMIC_LIST)
    ] = []
    priority_class_name: Annotated[
        StrictStr, Field(max_length=253, pattern=_DNS_SUBDOMAIN_OR_EMPTY_PATTERN)
    ] = ""
    resources: ResourceRequirements = ResourceRequirements()
    active_deadline_seconds: Annotated[StrictInt, Field(ge=10, le=3600)] = 120
    backoff_limit: Annotated[StrictInt, Field(ge=0, le=6)] = 1
    # At least a minute so the operator reads the agent's result before the Job is collected.
    ttl_seconds_after_finished: Annotated[StrictInt, Field(ge=60, le=604800)] = 600


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


class LastRestart(_StatusModel):
    """The last completed restart wave: which workloads were restarted after which checks."""

    wave: Annotated[StrictStr, Field(max_length=64)]
    at: Annotated[StrictStr, Field(max_length=64)]
    nodes: Annotated[StrictInt, Field(ge=0)] = 0
    count: Annotated[StrictInt, Field(ge=0)] = 0
    workloads: Annotated[
        list[Annotated[StrictStr, Field(max_length=512)]], Field(max_length=10)
    ] = []


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
