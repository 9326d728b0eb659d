"""Run the CRD's CEL rules (with cel-python, on Google RE2 like the API server) against the
example and invalid policies, after the CRD's defaulting.

This checks what the rules *mean* without an API server: every example passes every rule, and each
invalid policy breaks exactly the rule its `# expect:` names (or none, when the OpenAPI schema
catches it), and the rules and the models' mirrors agree on many more values. cel-python is not
cel-go: the real API server (integration tests) remains the judge of whether the rules compile
and fit the cost budget there.

cel-python lacks Kubernetes' quantity library; `quantity`, `isQuantity` and `compareTo` below
stand in for it (k8s.io/apiserver/pkg/cel/library/quantity.go), written apart from the models'
`nodesysctl.api.quantity_value` so that the two are checked against each other.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel

from nodesysctl.api import InvalidPolicy, parse_spec
from tests.unit.test_crd import apply_crd_defaults, openapi_schema, walk

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid-policies").glob("*.yaml"))

# resource.ParseQuantity's grammar: signed decimal number, then a suffix.
_QUANTITY = re.compile(
    r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
_SCALE = {
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal("1e3"),
    "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}  # fmt: skip


class CelQuantity:
    def __init__(self, value: Decimal) -> None:
        self.value = value


def _parse_quantity(text: str) -> Decimal | None:
    found = _QUANTITY.fullmatch(text)
    if found is None:
        return None
    number, suffix = Decimal(found[1]), found[2] or ""
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SCALE.get(suffix, Decimal(1))


def _cel_quantity(text: celtypes.Value) -> CelQuantity:
    value = _parse_quantity(str(text))
    if value is None:
        raise ValueError(f"quantities: invalid quantity {text!r}")
    return CelQuantity(value)


def _cel_is_quantity(text: celtypes.Value) -> celtypes.BoolType:
    return celtypes.BoolType(_parse_quantity(str(text)) is not None)


def _cel_compare_to(left: CelQuantity, right: CelQuantity) -> celtypes.IntType:
    return celtypes.IntType((left.value > right.value) - (left.value < right.value))


KUBERNETES_LIBRARY: dict[str, Any] = {
    "quantity": _cel_quantity,
    "isQuantity": _cel_is_quantity,
    "compareTo": _cel_compare_to,
}
ENVIRONMENT = celpy.Environment()
RULES = [
    (
        path,
        rule["message"],
        ENVIRONMENT.program(ENVIRONMENT.compile(rule["rule"]), functions=KUBERNETES_LIBRARY),
    )
    for path, node in walk(openapi_schema())
    for rule in node.get("x-kubernetes-validations", [])
]


def values_at(document: Any, path: str) -> list[Any]:
    """Every value at a schema path from `walk` ("spec.job.tolerations[]", "...matchLabels{}";
    "" is the root)."""
    values = [document]
    for part in path.replace("[]", ".[]").replace("{}", ".{}").split(".") if path else []:
        found: list[Any] = []
        for value in values:
            if part == "[]" and isinstance(value, list):
                found.extend(value)
            elif part == "{}" and isinstance(value, dict):
                found.extend(value.values())
            elif isinstance(value, dict) and part in value:
                found.append(value[part])
        values = found
    return values


def broken_rules(manifest: dict[str, Any]) -> list[str]:
    document = apply_crd_defaults(manifest, openapi_schema())
    broken = []
    for path, message, program in RULES:
        for value in values_at(document, path):
            result = program.evaluate({"self": json_to_cel(value)})
            if not (isinstance(result, celtypes.BoolType) and bool(result)):
                broken.append(f"{path or '<root>'}: {message} ({result!r})")
    return broken


def load(path: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    return manifest


def expected_message(path: Path) -> str:
    [line] = [line for line in path.read_text().splitlines() if line.startswith("# expect:")]
    return line.removeprefix("# expect:").strip()


def test_every_rule_is_exercised_by_some_invalid_policy() -> None:
    expected = [expected_message(path) for path in INVALID]
    for path, message, _ in RULES:
        assert any(text in message for text in expected), f"no invalid policy for {path}: {message}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_pass_every_rule(path: Path) -> None:
    assert broken_rules(load(path)) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_invalid_policy_breaks_only_the_rule_it_expects(path: Path) -> None:
    expect = expected_message(path)
    broken = broken_rules(load(path))
    if any(expect in message for _, message, _ in RULES):
        assert broken, f"no rule caught it, expected {expect!r}"
        assert all(expect in problem for problem in broken), broken
    else:
        assert broken == [], "the OpenAPI schema catches this one; no rule should fire"


@pytest.mark.parametrize(
    ("value", "holds"),
    [
        *[(value, True) for value in (1, 250, "1%", "100%", "25%")],
        *[(value, False) for value in (0, -3, "0%", "101%", "5", "05%")],
    ],
)
def test_max_concurrent_rule_on_int_or_string(value: int | str, holds: bool) -> None:
    manifest = {"metadata": {"name": "p"}, "spec": {"rollout": {"maxConcurrent": value}}}
    assert (broken_rules(manifest) == []) is holds


def models_accept(spec: dict[str, Any]) -> bool:
    try:
        parse_spec(spec)
    except InvalidPolicy:
        return False
    return True


def rules_accept(spec: dict[str, Any]) -> bool:
    return broken_rules({"metadata": {"name": "p"}, "spec": spec}) == []


LABEL_KEYS = [
    ("app", True),
    ("app.kubernetes.io/name", True),
    ("node-role.kubernetes.io/control-plane", True),
    ("A_b.c-D", True),
    ("x" * 63, True),
    ("x" * 64, False),
    (".".join(["a" * 63] * 3) + ".b/n", True),  # a 253-character prefix
    (".".join(["a" * 63] * 4) + "/n", False),  # 255
    ("dedicated node", False),
    ("-app", False),
    ("app-", False),
    ("Example.com/app", False),  # the prefix is a DNS subdomain: lowercase
    ("example.com/", False),
    ("/app", False),
    ("a/b/c", False),
    ("app\n", False),
]
LABEL_VALUES = [
    ("", True),
    ("web", True),
    ("v1.2_3-x", True),
    ("x" * 63, True),
    ("a,b", False),
    ("tier=web", False),
    ("a b", False),
    ("-web", False),
    ("web.", False),
    ("web\n", False),
]
# (resources, valid, what Kubernetes itself says): the CRD caps what the agent may ask for
# below what Kubernetes would accept.
RESOURCES: list[tuple[dict[str, Any], bool, bool]] = [
    ({"requests": {"cpu": "10m", "memory": "32Mi"}}, True, True),
    ({"requests": {"cpu": 1, "memory": 536870912}}, True, True),
    ({"limits": {"cpu": "1000m", "memory": "512Mi"}}, True, True),
    ({"limits": {"cpu": "0.5", "memory": "0.5Gi"}}, True, True),
    ({"limits": {"cpu": "1e0", "memory": "5e8"}}, True, True),
    ({"requests": {"cpu": "0", "memory": "0"}}, True, True),
    ({"limits": {"cpu": "1001m"}}, False, True),
    ({"limits": {"cpu": 2}}, False, True),
    ({"limits": {"memory": "513Mi"}}, False, True),
    ({"limits": {"memory": 536870913}}, False, True),
    ({"limits": {"memory": "1e9"}}, False, True),
    ({"requests": {"memory": "4Gi"}}, False, True),
    ({"requests": {"cpu": "-1m"}}, False, False),
    ({"requests": {"memory": -1}}, False, False),
    ({"requests": {"cpu": "100m"}, "limits": {"cpu": "100m"}}, True, True),
    ({"requests": {"cpu": "101m"}, "limits": {"cpu": "0.1"}}, False, False),
    ({"requests": {"memory": "64Mi"}, "limits": {"memory": "65536Ki"}}, True, True),
    ({"requests": {"memory": "65Mi"}, "limits": {"memory": "64Mi"}}, False, False),
    ({"requests": {"cpu": "500m"}, "limits": {"memory": "64Mi"}}, True, True),
]
# Tolerations without a key: with operator Exists they tolerate every taint (of the effect, if
# one is given), which Kubernetes accepts, and so do the CRD and the models.
TOLERATE_EVERYTHING: list[dict[str, Any]] = [
    {"operator": "Exists"},
    {"key": "", "operator": "Exists"},
    {"operator": "Exists", "effect": "NoExecute"},
]
PRIORITY_CLASS_NAMES = [
    ("", True),
    ("high", True),
    ("system-node-critical", True),
    ("a.b-c", True),
    ("High", False),
    ("high_priority", False),
    ("-high", False),
    ("high.", False),
]


@dataclasses.dataclass(frozen=True)
class Case:
    """A spec on which the CRD and the models must give the same verdict, `valid`; the
    integration tests put it to the real API server, and what it passes on to Kubernetes
    (`labels` as an object's labels, or `job` fields in an agent Job) to Kubernetes' own
    validation, which says `kubernetes_valid`."""

    id: str
    spec: dict[str, Any]
    valid: bool
    kubernetes_valid: bool
    labels: dict[str, str] | None = None
    job: dict[str, Any] | None = None


def agreement_cases() -> list[Case]:
    cases: list[Case] = []
    for index, (key, valid) in enumerate(LABEL_KEYS):
        expression = {"key": key, "operator": "Exists"}
        toleration = {"key": key, "operator": "Exists"}
        cases += [
            Case(f"label-key-{index}", {"nodeSelector": {"matchLabels": {key: "x"}}}, valid,
                 valid, labels={key: "x"}),
            Case(f"expression-key-{index}",
                 {"restart": {"selector": {"matchExpressions": [expression]}}}, valid, valid,
                 labels={key: "x"}),
            Case(f"toleration-key-{index}", {"job": {"tolerations": [toleration]}}, valid, valid,
                 job={"tolerations": [toleration]}),
        ]  # fmt: skip
    for index, (value, valid) in enumerate(LABEL_VALUES):
        requirement = {"key": "p", "operator": "In", "values": [value]}
        toleration = {"key": "p", "operator": "Equal", "value": value}
        cases += [
            Case(f"label-value-{index}", {"nodeSelector": {"matchLabels": {"p": value}}}, valid,
                 valid, labels={"p": value}),
            Case(f"restart-label-value-{index}",
                 {"restart": {"selector": {"matchLabels": {"p": value}}}}, valid, valid,
                 labels={"p": value}),
            Case(f"expression-value-{index}", {"nodeSelector": {"matchExpressions": [requirement]}},
                 valid, valid, labels={"p": value}),
            Case(f"toleration-value-{index}", {"job": {"tolerations": [toleration]}}, valid, valid,
                 job={"tolerations": [toleration]}),
        ]  # fmt: skip
    for index, toleration in enumerate(TOLERATE_EVERYTHING):
        tolerations: dict[str, Any] = {"tolerations": [toleration]}
        cases.append(Case(f"toleration-every-taint-{index}", {"job": tolerations}, True, True,
                          job=tolerations))  # fmt: skip
    for index, (resources, valid, kubernetes_valid) in enumerate(RESOURCES):
        job: dict[str, Any] = {"resources": resources}
        cases.append(Case(f"resources-{index}", {"job": job}, valid, kubernetes_valid, job=job))
    for index, (name, valid) in enumerate(PRIORITY_CLASS_NAMES):
        job = {"priorityClassName": name}
        cases.append(Case(f"priority-class-{index}", {"job": job}, valid, valid, job=job))
    return cases


@pytest.mark.parametrize("case", agreement_cases(), ids=lambda case: case.id)
def test_rules_and_models_agree(case: Case) -> None:
    assert models_accept(case.spec) is case.valid
    assert rules_accept(case.spec) is case.valid
