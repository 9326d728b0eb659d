"""The CRD in `crds/nodesysctlpolicies.yaml`: its shape, its hygiene, and its sync with the
pydantic models in `nodesysctl.api`.

The sync test walks the CRD's OpenAPI schema and the models' JSON schema side by side and fails on
any difference in fields, required fields, types, enums, bounds, patterns, list types, defaults
(after the API server's own nested defaulting) and CEL rule messages: a model's `RULES` for an
object and its scalar properties, `nodesysctl.api.Check` (shown in the JSON schema) for a map,
a map's values or a list's items. Add a field, a bound or a rule to one side only and it names
the path.

`apply_crd_defaults` and `crd_schema_errors` are small stand-ins for the API server's structural
defaulting and OpenAPI validation (no CEL); `test_examples.py` uses them too.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import nodesysctl
from nodesysctl import api

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "nodesysctlpolicies.yaml"

# Properties the CRD keeps that the models deliberately do not: Kopf stores its handler progress
# in `status.kopf`; the operator never reads or writes it.
CRD_ONLY_PATHS = {"status.kopf"}
BOUND_KEYWORDS = (
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "x-kubernetes-list-type",
)


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = openapi_schema()["properties"]["spec"]
    return schema


def is_int_or_string(schema: dict[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


def apply_crd_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: fill a missing property with its default,
    then recurse, so the defaults nested inside a default `{}` apply too."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
        for name, item in value.items():
            if name in schema.get("properties", {}):
                value[name] = apply_crd_defaults(item, schema["properties"][name])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[name] = apply_crd_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_crd_defaults(item, schema["items"]) for item in value]
    return value


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def crd_schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """OpenAPI validation of `value` against a CRD schema node (no CEL, no formats)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return []
    if is_int_or_string(schema):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{path}: must be an integer or a string"]
        if isinstance(value, str) and not re.search(schema.get("pattern", ""), value):
            return [f"{path}: should match {schema['pattern']}"]
        return []
    expected = schema["type"]
    is_bool_as_int = expected == "integer" and isinstance(value, bool)
    if not isinstance(value, _JSON_TYPES[expected]) or is_bool_as_int:
        return [f"{path}: must be of type {expected}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: unsupported value {value!r}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: should match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if schema.get("x-kubernetes-list-type") == "set" and len(set(value)) != len(value):
            errors.append(f"{path}: duplicate items in a set")
        for index, item in enumerate(value):
            errors += crd_schema_errors(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(f"{path}: more than {schema['maxProperties']} properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                errors += crd_schema_errors(item, properties[name], f"{path}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += crd_schema_errors(item, schema["additionalProperties"], f"{path}.{name}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{name}: unknown field")
    return errors


def drop_empty(value: Any) -> Any:
    """None for None, "", [] and {} (and dicts of only those), so "absent" and "empty" compare
    equal: they mean the same to nodesysctl (the CRD leaves optional lists unset, the models
    default them to empty)."""
    if isinstance(value, dict):
        kept = {key: drop_empty(item) for key, item in value.items()}
        value = {key: item for key, item in kept.items() if item is not None}
    elif isinstance(value, list):
        value = [drop_empty(item) for item in value]
    return None if value in ("", [], {}) else value


# --- the CRD's own shape ------------------------------------------------------------------------


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path (`[]` for list items, `{}` for map values)."""
    nodes = [(path, schema)]
    for name, prop in schema.get("properties", {}).items():
        nodes += walk(prop, f"{path}.{name}" if path else name)
    if "items" in schema:
        nodes += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def test_crd_identity() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{nodesysctl.PLURAL}.{nodesysctl.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == nodesysctl.GROUP
    assert spec["scope"] == "Cluster"
    assert spec["names"] == {
        "kind": nodesysctl.KIND,
        "listKind": f"{nodesysctl.KIND}List",
        "plural": nodesysctl.PLURAL,
        "singular": "nodesysctlpolicy",
        "shortNames": ["nsp"],
        "categories": ["nodesysctl"],
    }
    [version] = spec["versions"]
    assert version["name"] == nodesysctl.VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns_point_at_real_fields() -> None:
    version = load_crd()["spec"]["versions"][0]
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Mode",
        "Nodes",
        "Compliant",
        "Drifted",
        "Failed",
        "Ready",
        "Waiting",
        "Age",
    ]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    known = {path for path, _ in walk(openapi_schema())}
    for name, column in columns.items():
        if name in ("Ready", "Age"):
            continue
        assert column["jsonPath"].removeprefix(".") in known, column


def test_schema_is_structural() -> None:
    for path, node in walk(openapi_schema()):
        if is_int_or_string(node):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"{path}: every node needs a type to be structural"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path
        if node.get("x-kubernetes-list-type") == "set":
            assert node["items"]["type"] in ("string", "integer"), path
    status = openapi_schema()["properties"]["status"]
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def test_strings_lists_and_maps_are_bounded_for_cel_cost() -> None:
    """The API server estimates each CEL rule's cost from maxLength/maxItems/maxProperties;
    an unbounded one makes it assume the 3 MiB request limit and can refuse the CRD."""
    for path, node in walk(openapi_schema()["properties"]["spec"], "spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: map without maxProperties"


def test_every_cel_rule_has_a_one_line_message_and_a_real_field_path() -> None:
    rules = 0
    for path, node in walk(openapi_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            rules += 1
            assert rule["message"].strip() == rule["message"], path
            assert "\n" not in rule["message"], path
            assert "\n" not in rule["rule"], path
            assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path
            assert rule.get("reason", "FieldValueInvalid") in {
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            }, path
            target = node
            for part in rule.get("fieldPath", "").split(".")[1:]:
                target = target["properties"][part]
    assert rules


def test_defaults_are_valid_after_nested_defaulting() -> None:
    for path, node in walk(openapi_schema()):
        if "default" in node:
            defaulted = apply_crd_defaults(node["default"], node)
            assert crd_schema_errors(defaulted, node, path) == []


def test_empty_spec_defaults_to_the_design() -> None:
    """`spec: {}` is a complete policy: every node, the kernel and NodePort defaults."""
    defaulted = apply_crd_defaults({}, spec_schema())
    assert defaulted["ports"] == {
        "ephemeralRange": {"min": 32768, "max": 60999},
        "nodePortRange": {"min": 30000, "max": 32767},
    }
    assert defaulted["remediation"] == {
        "mode": "Enforce",
        "narrowRange": True,
        "reservePorts": True,
        "persist": True,
        "sysctlDir": "/etc/sysctl.d",
    }
    assert defaulted["rollout"] == {
        "maxConcurrent": "25%",
        "maxFailedNodes": 1,
        "recheckInterval": "1h",
    }
    assert defaulted["job"] == {
        "image": "",
        "priorityClassName": "",
        "resources": {},
        "activeDeadlineSeconds": 120,
        "backoffLimit": 1,
        "ttlSecondsAfterFinished": 600,
    }
    assert "restart" not in defaulted
    assert apply_crd_defaults({}, spec_schema()["properties"]["restart"]) == {
        "mode": "OnRemediation",
        "pods": "HostNetwork",
        "maxPerHour": 60,
        "kinds": ["Deployment"],
        "selector": {"matchLabels": {"nodesysctl.io/restart": "true"}},
    }


# --- sync with the pydantic models --------------------------------------------------------------


def crd_rules(node: dict[str, Any]) -> set[tuple[str, str, str]]:
    """The rules on an object node, plus those on its scalar properties (which the models attach
    to the object with fieldPath ".<property>")."""
    rules = {
        (rule["message"], rule.get("fieldPath", ""), rule.get("reason", "FieldValueInvalid"))
        for rule in node.get("x-kubernetes-validations", [])
    }
    for name, prop in node.get("properties", {}).items():
        if prop.get("type") not in ("object", "array"):
            for rule in prop.get("x-kubernetes-validations", []):
                assert "fieldPath" not in rule, f"{name}: scalar rules need no fieldPath"
                rules.add((rule["message"], f".{name}", rule.get("reason", "FieldValueInvalid")))
    return rules


def model_rules(model: type[Any]) -> set[tuple[str, str, str]]:
    return {(rule.message, rule.field_path, rule.reason) for rule in getattr(model, "RULES", ())}


def rule_messages(node: dict[str, Any]) -> list[str]:
    """The messages of a node's own rules: the CRD's, or a model JSON schema's `Check`s."""
    return sorted(rule["message"] for rule in node.get("x-kubernetes-validations", []))


def is_scalar(node: dict[str, Any]) -> bool:
    return node.get("type") not in ("object", "array")


class SchemaSync:
    """Walks a CRD schema node and the matching pydantic JSON schema node together."""

    def __init__(self) -> None:
        self.json_schema = api.NodeSysctlPolicy.model_json_schema(by_alias=True)
        self.definitions: dict[str, Any] = self.json_schema.get("$defs", {})
        self.problems: list[str] = []

    def problem(self, path: str, text: str) -> None:
        self.problems.append(f"{path}: {text}")

    def resolve(self, node: dict[str, Any]) -> tuple[dict[str, Any], type[Any] | None]:
        """Follow $ref (naming the model) and unwrap `X | None`."""
        if "anyOf" in node and {"type": "null"} in node["anyOf"]:
            members = [member for member in node["anyOf"] if member != {"type": "null"}]
            node = members[0] if len(members) == 1 else {**node, "anyOf": members}
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return self.definitions[name], getattr(api, name, None)
        return node, None

    def compare(
        self,
        crd: dict[str, Any],
        model_node: dict[str, Any],
        path: str,
        *,
        rules_checked: bool = False,
    ) -> None:
        """`rules_checked`: the node's rules were compared already, as a `Rule` of the model
        that holds it (a scalar property of a modelled object)."""
        model_node, model = self.resolve(model_node)
        if model is None and not rules_checked and rule_messages(crd) != rule_messages(model_node):
            self.problem(
                path, f"CEL rules differ: {rule_messages(crd)} vs {rule_messages(model_node)}"
            )
        if is_int_or_string(crd):
            members = [self.resolve(member)[0] for member in model_node.get("anyOf", [])]
            if sorted(member.get("type", "") for member in members) != ["integer", "string"]:
                self.problem(path, "CRD has int-or-string, the model does not")
            string_patterns = [m["pattern"] for m in members if "pattern" in m]
            if string_patterns != ([crd["pattern"]] if "pattern" in crd else []):
                self.problem(path, f"pattern {crd.get('pattern')} vs {string_patterns}")
            return
        if crd.get("type") != model_node.get("type"):
            self.problem(path, f"type {crd.get('type')} vs {model_node.get('type')}")
            return
        if crd.get("enum") != model_node.get("enum"):
            self.problem(path, f"enum {crd.get('enum')} vs {model_node.get('enum')}")
        for keyword in BOUND_KEYWORDS:
            if crd.get(keyword) != model_node.get(keyword):
                self.problem(path, f"{keyword} {crd.get(keyword)} vs {model_node.get(keyword)}")
        if crd["type"] == "array":
            self.compare(crd["items"], model_node["items"], f"{path}[]")
        if crd["type"] == "object":
            self.compare_object(crd, model_node, model, path)

    def compare_object(
        self, crd: dict[str, Any], model_node: dict[str, Any], model: type[Any] | None, path: str
    ) -> None:
        if isinstance(crd.get("additionalProperties"), dict):
            self.compare(
                crd["additionalProperties"], model_node["additionalProperties"], path + "{}"
            )
        crd_props = {
            name: prop
            for name, prop in crd.get("properties", {}).items()
            if f"{path}.{name}" not in CRD_ONLY_PATHS
        }
        model_props = model_node.get("properties", {})
        for name in sorted(crd_props.keys() - model_props.keys()):
            self.problem(f"{path}.{name}", "in the CRD, missing from the model")
        for name in sorted(model_props.keys() - crd_props.keys()):
            self.problem(f"{path}.{name}", "in the model, missing from the CRD")
        if set(crd.get("required", [])) != set(model_node.get("required", [])):
            self.problem(path, f"required {crd.get('required')} vs {model_node.get('required')}")
        if model is not None and crd_rules(crd) != model_rules(model):
            self.problem(
                path,
                f"CEL rules differ; CRD only: {crd_rules(crd) - model_rules(model)}; "
                f"model only: {model_rules(model) - crd_rules(crd)}",
            )
        for name in sorted(crd_props.keys() & model_props.keys()):
            self.compare_default(crd_props[name], model_props[name], f"{path}.{name}")
            self.compare(
                crd_props[name],
                model_props[name],
                f"{path}.{name}",
                rules_checked=model is not None and is_scalar(crd_props[name]),
            )

    def compare_default(self, crd: dict[str, Any], model_node: dict[str, Any], path: str) -> None:
        if path.startswith("status"):
            return  # written by the operator, never defaulted by the API server
        crd_default = apply_crd_defaults(crd.get("default"), crd)
        if drop_empty(crd_default) != drop_empty(model_node.get("default")):
            self.problem(path, f"default {crd_default!r} vs {model_node.get('default')!r}")


def test_models_and_crd_schema_are_in_sync() -> None:
    sync = SchemaSync()
    root = openapi_schema()
    root_json = sync.json_schema
    assert crd_rules(root) == model_rules(api.NodeSysctlPolicy)
    assert set(root["properties"]) == set(root_json["properties"])
    for part in ("spec", "status"):
        sync.compare(root["properties"][part], root_json["properties"][part], part)
    assert sync.problems == []


def test_the_sync_check_notices_a_field_missing_from_the_model() -> None:
    sync = SchemaSync()
    crd_spec = copy.deepcopy(spec_schema())
    crd_spec["properties"]["ports"]["properties"]["extra"] = {"type": "integer"}
    crd_spec["properties"]["rollout"]["properties"]["maxFailedNodes"]["maximum"] = 5
    crd_spec["properties"]["job"]["properties"]["backoffLimit"]["default"] = 2
    crd_spec["properties"]["remediation"]["x-kubernetes-validations"][0]["message"] = "changed"
    labels = crd_spec["properties"]["nodeSelector"]["properties"]["matchLabels"]
    labels["additionalProperties"]["x-kubernetes-validations"][0]["message"] = "changed too"
    del labels["x-kubernetes-validations"]
    sync.compare(crd_spec, sync.json_schema["properties"]["spec"], "spec")
    found = "\n".join(sync.problems)
    assert "spec.ports.extra: in the CRD, missing from the model" in found
    assert "spec.rollout.maxFailedNodes: maximum 5 vs None" in found
    assert "spec.job.backoffLimit: default 2 vs 1" in found
    assert "spec.remediation: CEL rules differ" in found
    assert "spec.nodeSelector.matchLabels{}: CEL rules differ: ['changed too']" in found
    assert 'spec.nodeSelector.matchLabels: CEL rules differ: [] vs ["keys must be' in found


@pytest.mark.parametrize(
    ("enum_class", "crd_path"),
    [
        (api.Mode, "spec.remediation.mode"),
        (api.RestartMode, "spec.restart.mode"),
        (api.RestartPods, "spec.restart.pods"),
        (api.WorkloadKind, "spec.restart.kinds[]"),
        (api.SelectorOperator, "spec.nodeSelector.matchExpressions[].operator"),
        (api.TolerationOperator, "spec.job.tolerations[].operator"),
        (api.TaintEffect, "spec.job.tolerations[].effect"),
        (api.ConditionStatus, "status.conditions[].status"),
    ],
)
def test_enums_match(enum_class: type[Any], crd_path: str) -> None:
    nodes = dict(walk(openapi_schema()))
    assert nodes[crd_path]["enum"] == [member.value for member in enum_class]


def test_policy_name_limit_matches_the_crd_rule() -> None:
    [rule] = openapi_schema()["x-kubernetes-validations"]
    assert rule["rule"] == f"self.metadata.name.size() <= {api.MAX_POLICY_NAME_LENGTH}"


def test_the_crd_rules_quote_the_models_patterns_and_limits() -> None:
    """The CEL rules and their Python mirrors share their regular expressions and limits:
    the CRD spells out what `nodesysctl.api` defines."""
    nodes = dict(walk(openapi_schema()))

    def rule(path: str, message_start: str) -> str:
        found: str
        [found] = [
            r["rule"]
            for r in nodes[path].get("x-kubernetes-validations", [])
            if r["message"].startswith(message_start)
        ]
        return found

    key_rules = [
        rule("spec.nodeSelector.matchLabels", "keys must be a label key"),
        rule("spec.restart.selector.matchLabels", "keys must be a label key"),
        rule("spec.nodeSelector.matchExpressions[]", "key must be a label key"),
        rule("spec.restart.selector.matchExpressions[]", "key must be a label key"),
        rule("spec.job.tolerations[]", "a toleration key"),
    ]
    for text in key_rules:
        assert f"matches('{api.QUALIFIED_NAME_PATTERN}')" in text
        assert f"matches('{api.QUALIFIED_NAME_PREFIX_PATTERN}')" in text
    value_rules = [
        rule("spec.nodeSelector.matchLabels{}", "values must be a label value"),
        rule("spec.restart.selector.matchLabels{}", "values must be a label value"),
        rule("spec.nodeSelector.matchExpressions[].values[]", "values must be a label value"),
        rule("spec.restart.selector.matchExpressions[].values[]", "values must be a label value"),
        rule("spec.job.tolerations[]", "a toleration value"),
    ]
    for text in value_rules:
        assert f"matches('{api.LABEL_VALUE_PATTERN}')" in text
    assert f"matches('{api.DNS_SUBDOMAIN_PATTERN}')" in rule(
        "spec.job.priorityClassName", "priorityClassName"
    )
    assert rule("spec.remediation.sysctlDir", "sysctlDir") == f"self in {list(api.SYSCTL_DIRS)}"
    for kind in ("requests", "limits"):
        assert f"quantity('{api.MAX_AGENT_CPU}')" in rule(f"spec.job.resources.{kind}.cpu", "cpu")
        assert f"quantity('{api.MAX_AGENT_MEMORY}')" in rule(
            f"spec.job.resources.{kind}.memory", "memory"
        )


def test_worst_nodes_limit_matches_the_crd() -> None:
    worst = openapi_schema()["properties"]["status"]["properties"]["worstNodes"]
    assert worst["maxItems"] == api.MAX_WORST_NODES


def test_design_doc_lists_every_cel_message() -> None:
    """docs/design.md is the contract people code against; keep its validation table true."""
    design = (REPO / "docs" / "design.md").read_text()
    for path, node in walk(openapi_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert f"`{rule['message']}`" in design, f"{path}: {rule['message']}"
