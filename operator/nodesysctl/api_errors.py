"""Pydantic's validation errors in the API server's words.

A policy the API server should have refused (an old CRD, a disabled validation) is refused by
the operator too, and the user reads the same sentence both times (`spec.rollout.maxFailedNodes:
Invalid value: 0: spec.rollout.maxFailedNodes in body should be greater than or equal to 1`,
not pydantic's `Input should be greater than or equal to 1`). This module does that translation
and nothing else: it knows pydantic's error types and the API server's wording, not the policy's
models, so `nodesysctl.api` imports it and never the other way round.

A broken CEL mirror (`nodesysctl.api.Rule`) reaches here as one `rule_violation` error that
carries each broken rule's fieldPath and message; both sides of that hand-over live here.

Pure core: imports neither `kubernetes` nor `kopf`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

# The pydantic error type of a broken CEL mirror; its context holds "broken", a tuple of
# (fieldPath, message) pairs, one per broken rule.
RULE_VIOLATION = "x_kubernetes_validation"


def rule_violation(broken: Sequence[tuple[str, str]]) -> PydanticCustomError:
    """The error a model raises when some of its CEL mirrors do not hold: `broken` holds each
    rule's (fieldPath, message), which `kubernetes_problems` reports one problem each."""
    return PydanticCustomError(
        RULE_VIOLATION,
        "{summary}",
        {"summary": "; ".join(message for _, message in broken), "broken": tuple(broken)},
    )


def kubernetes_problems(error: ValidationError, prefix: tuple[str, ...]) -> list[str]:
    """One "path: message" per problem in `error`, worded as the API server words it; `prefix`
    is the location of the validated value in the object (("spec",) for a policy's spec)."""
    problems: list[str] = []
    for detail in _without_union_noise(error.errors()):
        location = (*prefix, *_schema_location(detail["loc"]))
        if detail["type"] == RULE_VIOLATION:
            for field_path, message in detail["ctx"]["broken"]:
                problems.append(f"{_format_path(location)}{field_path}: {message}")
        else:
            problems.append(f"{_format_path(location)}: {_kubernetes_message(detail, location)}")
    return problems


# Pydantic names the union member ("int", "str", "constrained-str", "function-after[...]") in the
# location of an error inside an int-or-string union; the API server names only the field.
_UNION_TAGS = frozenset({"int", "str", "bool", "constrained-str", "constrained-int"})


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part)


def _schema_location(loc: Iterable[str | int]) -> list[str | int]:
    return [part for part in loc if not _is_union_tag(part)]


def _without_union_noise(details: list[ErrorDetails]) -> list[ErrorDetails]:
    """For a value no union member accepts, keep what the user must fix: the constraint the value
    broke in the member of its own type, or a single type error if it has neither type."""
    by_field: dict[tuple[str | int, ...], list[ErrorDetails]] = {}
    kept: list[ErrorDetails] = []
    for detail in details:
        if any(_is_union_tag(part) for part in detail["loc"]):
            by_field.setdefault(tuple(_schema_location(detail["loc"])), []).append(detail)
        else:
            kept.append(detail)
    for members in by_field.values():
        constraint_errors = [d for d in members if d["type"] not in _TYPE_NAMES]
        kept.extend(constraint_errors or [_merged_type_error(members)])
    return kept


def _merged_type_error(members: list[ErrorDetails]) -> ErrorDetails:
    first = members[0]
    return ErrorDetails(
        type="union_type",
        loc=first["loc"],
        msg=first["msg"],
        input=first["input"],
        ctx={"types": ",".join(_TYPE_NAMES[member["type"]] for member in members)},
    )


def _format_path(location: Sequence[str | int]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


# Pydantic's error types, worded as the API server words the same schema violation, so a user
# sees one vocabulary whether the API server or the operator refused the policy.
_TYPE_NAMES = {
    "int_type": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "model_type": "object",
    "dict_type": "object",
    "list_type": "array",
}


def _kubernetes_message(detail: ErrorDetails, location: Sequence[str | int]) -> str:
    kind = detail["type"]
    ctx = detail.get("ctx", {})
    shown = json.dumps(detail["input"], default=str)
    path = _format_path(location)
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return f'unknown field "{path}"'
    if kind in ("enum", "literal_error"):
        supported = ", ".join(f'"{value}"' for value in re.findall(r"'([^']*)'", ctx["expected"]))
        return f"Unsupported value: {shown}: supported values: {supported}"
    invalid = f"Invalid value: {shown}: {path} in body"
    if kind == "greater_than_equal":
        return f"{invalid} should be greater than or equal to {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{invalid} should be less than or equal to {ctx['le']}"
    if kind == "string_pattern_mismatch":
        return f"{invalid} should match '{ctx['pattern']}'"
    if kind == "string_too_long":
        return f"Too long: may not be more than {ctx['max_length']} bytes"
    if kind == "string_too_short":
        return f"{invalid} should be at least {ctx['min_length']} chars long"
    if kind == "too_long":
        return f"Too many: {ctx['actual_length']}: must have at most {ctx['max_length']} items"
    if kind == "too_short":
        return f"{invalid} should have at least {ctx['min_length']} items"
    if kind == "union_type":
        return f"{invalid} must be of type {ctx['types']}"
    if kind in _TYPE_NAMES:
        return f"{invalid} must be of type {_TYPE_NAMES[kind]}"
    return detail["msg"]
