"""The API server's wording of validation problems (`nodesysctl.api_errors`): through
`parse_spec`, as a user meets it, and on small models of its own, to show the translation
depends on pydantic's error types only, not on the policy's models."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError, model_validator

from nodesysctl.api import InvalidPolicy, parse_spec
from nodesysctl.api_errors import kubernetes_problems, rule_violation


def test_every_problem_is_listed_with_its_path() -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_spec(
            {
                "ports": {"ephemeralRange": {"min": 1024, "max": 65000}},
                "remediation": {"mode": "Fix"},
                "rollout": {"maxFailedNodes": 0},
                "job": {"tolerations": [{"operator": "Exists", "value": "x"}]},
                "typo": True,
            }
        )
    assert set(refused.value.problems) == {
        "spec.ports.ephemeralRange: ephemeralRange must not overlap nodePortRange: host "
        "connections would take source ports that NodePort Services own",
        'spec.remediation.mode: Unsupported value: "Fix": supported values: "Enforce", "Audit"',
        "spec.rollout.maxFailedNodes: Invalid value: 0: spec.rollout.maxFailedNodes in body "
        "should be greater than or equal to 1",
        "spec.job.tolerations[0].value: a toleration with operator Exists must not set value",
        'spec.typo: unknown field "spec.typo"',
    }
    assert str(refused.value).startswith("invalid NodeSysctlPolicy: ")
    assert "\n" not in str(refused.value), "one line, fit for a condition message"
    assert isinstance(refused.value, ValueError)


def test_several_broken_rules_on_one_object_are_each_listed() -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_spec({"ports": {"ephemeralRange": {"min": 100, "max": 600}}})
    assert [problem.split(": ", 1)[1] for problem in refused.value.problems] == [
        "ephemeralRange.min must be at least 1024, ports below are for host services",
        "ephemeralRange must span at least 1000 ports, fewer starves outgoing connections",
    ]


def test_wrong_types_are_refused_not_coerced() -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_spec({"ports": {"protectedPorts": ["10250"]}, "remediation": {"persist": "yes"}})
    assert refused.value.problems == (
        'spec.ports.protectedPorts[0]: Invalid value: "10250": '
        "spec.ports.protectedPorts[0] in body must be of type integer",
        'spec.remediation.persist: Invalid value: "yes": '
        "spec.remediation.persist in body must be of type boolean",
    )


def test_int_or_string_type_error_is_one_problem() -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_spec({"rollout": {"maxConcurrent": True}})
    assert refused.value.problems == (
        "spec.rollout.maxConcurrent: Invalid value: true: spec.rollout.maxConcurrent in body "
        "must be of type integer,string",
    )


class _Item(BaseModel):
    count: Annotated[StrictInt, Field(ge=1)]


class _Thing(BaseModel):
    items: list[_Item] = []
    size: StrictInt | Annotated[StrictStr, Field(pattern=r"^[0-9]+%$")] = 1
    low: StrictInt = 0
    high: StrictInt = 0

    @model_validator(mode="after")
    def _ordered(self) -> _Thing:
        if self.low > self.high:
            raise rule_violation([(".low", "low must not be above high"), ("", "also this")])
        return self


def problems_of(raw: dict[str, object], prefix: tuple[str, ...] = ("spec",)) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        _Thing.model_validate(raw)
    return kubernetes_problems(refused.value, prefix=prefix)


def test_list_indexes_and_the_prefix_make_the_path() -> None:
    assert problems_of({"items": [{"count": 1}, {"count": 0}]}) == [
        "spec.items[1].count: Invalid value: 0: spec.items[1].count in body "
        "should be greater than or equal to 1"
    ]
    assert problems_of({"items": [{}]}, prefix=()) == ["items[0].count: Required value"]


def test_a_rule_violation_is_one_problem_per_broken_rule_at_its_field_path() -> None:
    assert problems_of({"low": 2, "high": 1}) == [
        "spec.low: low must not be above high",
        "spec: also this",
    ]


def test_union_members_are_not_named_in_the_path() -> None:
    assert problems_of({"size": "ten"}) == [
        "spec.size: Invalid value: \"ten\": spec.size in body should match '^[0-9]+%$'"
    ]
    assert problems_of({"size": 1.5}) == [
        "spec.size: Invalid value: 1.5: spec.size in body must be of type integer,string"
    ]
