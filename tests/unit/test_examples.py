"""`examples/` holds valid policies, `tests/data/invalid-policies/` one mistake each.

Valid examples must pass the pydantic models and the CRD's OpenAPI schema, and the models must
default them exactly as the API server would. Invalid ones carry `# expect: <text>`, the text the
API server's refusal contains (the CRD/CEL message); the operator's own parser must refuse them
with the same words. The real API server runs the same files in the integration tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodesysctl.api import InvalidPolicy, parse_policy, parse_spec
from tests.unit.test_crd import (
    apply_crd_defaults,
    crd_schema_errors,
    drop_empty,
    openapi_schema,
    walk,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid-policies").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def expected_message(path: Path) -> str:
    [expect] = [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]
    return expect


def test_there_are_enough_examples() -> None:
    assert 4 <= len(EXAMPLES) <= 8
    assert len(INVALID) >= 18


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_is_a_valid_policy(path: Path) -> None:
    assert path.read_text().startswith("#"), "each example starts with a comment on its use case"
    manifest = load(path)
    policy = parse_policy(manifest)
    # metadata is validated by the API server itself, not by the CRD schema.
    without_metadata = {key: value for key, value in manifest.items() if key != "metadata"}
    defaulted = apply_crd_defaults(without_metadata, openapi_schema())
    assert crd_schema_errors(defaulted, openapi_schema()) == []
    # The models fill in what the API server fills in, no more, no less.
    assert drop_empty(policy.spec.model_dump(by_alias=True, mode="json")) == drop_empty(
        defaulted["spec"]
    )


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_invalid_policy_is_refused_with_the_api_server_words(path: Path) -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_policy(load(path))
    assert expected_message(path) in str(refused.value)


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_invalid_policy_has_exactly_one_mistake(path: Path) -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_policy(load(path))
    assert len(refused.value.problems) == 1, refused.value.problems


def test_invalid_spec_is_refused_by_parse_spec_too() -> None:
    manifest = load(
        REPO / "tests" / "data" / "invalid-policies" / "ephemeral-overlaps-nodeports.yaml"
    )
    with pytest.raises(InvalidPolicy, match="ephemeralRange must not overlap nodePortRange"):
        parse_spec(manifest["spec"])


def cel_messages() -> list[str]:
    return [
        rule["message"]
        for _, node in walk(openapi_schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.name)
def test_invalid_policy_is_caught_by_the_layer_its_message_names(path: Path) -> None:
    """A mistake whose expected text is a CEL message must get past the OpenAPI schema (so the
    CEL rule is what catches it); any other mistake must be caught by the schema itself."""
    manifest = load(path)
    without_metadata = {key: value for key, value in manifest.items() if key != "metadata"}
    defaulted = apply_crd_defaults(without_metadata, openapi_schema())
    schema_errors = crd_schema_errors(defaulted, openapi_schema())
    names_a_cel_rule = any(expected_message(path) in message for message in cel_messages())
    assert (schema_errors == []) == names_a_cel_rule, schema_errors
