"""Run the CRD's CEL rules (with cel-python, on Google RE2 like the API server) against the
example and invalid policies, after the CRD's defaulting.

This checks what the rules *mean* without an API server: every example passes every rule, and each
invalid policy breaks exactly the rule its `# expect:` names (or none, when the OpenAPI schema
catches it). cel-python is not cel-go: the real API server (integration tests) remains the judge
of whether the rules compile and fit the cost budget there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel

from tests.unit.test_crd import apply_crd_defaults, openapi_schema, walk

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid-policies").glob("*.yaml"))

ENVIRONMENT = celpy.Environment()
RULES = [
    (path, rule["message"], ENVIRONMENT.program(ENVIRONMENT.compile(rule["rule"])))
    for path, node in walk(openapi_schema())
    for rule in node.get("x-kubernetes-validations", [])
]


def values_at(document: Any, path: str) -> list[Any]:
    """Every value at a schema path from `walk` ("spec.job.tolerations[]"; "" is the root)."""
    values = [document]
    for part in path.replace("[]", ".[]").split(".") if path else []:
        found: list[Any] = []
        for value in values:
            if part == "[]" and isinstance(value, list):
                found.extend(value)
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
