"""Behaviour of the `nodesysctl.api` models beyond what the CRD sync test covers: helpers,
selector semantics and parsing (the wording of its problems is in `test_api_errors.py`)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodesysctl.api import (
    SYSCTL_DIRS,
    InvalidPolicy,
    LabelSelector,
    Mode,
    NodeSysctlPolicySpec,
    PortRangeSpec,
    PortsSpec,
    RestartMode,
    RolloutSpec,
    WorkloadKind,
    parse_policy,
    parse_spec,
    quantity_value,
)


def test_empty_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec({})
    assert spec.ports.ephemeral_range == PortRangeSpec(min=32768, max=60999)
    assert spec.ports.node_port_range == PortRangeSpec(min=30000, max=32767)
    assert spec.ports.protected_ports == []
    assert spec.remediation.mode is Mode.ENFORCE
    assert spec.remediation.narrow_range
    assert spec.remediation.reserve_ports
    assert spec.remediation.persist
    assert spec.remediation.sysctl_dir == "/etc/sysctl.d"
    assert spec.rollout.max_concurrent == "25%"
    assert spec.rollout.max_failed_nodes == 1
    assert spec.rollout.recheck_interval_seconds() == 3600
    assert spec.restart is None
    assert spec.job.active_deadline_seconds == 120
    assert spec.job.backoff_limit == 1
    assert spec.job.ttl_seconds_after_finished == 600
    assert spec.node_selector.matches({"any": "node"})


def test_restart_defaults_to_opt_in_deployments() -> None:
    restart = parse_spec({"restart": {}}).restart
    assert restart is not None
    assert restart.mode is RestartMode.ON_REMEDIATION
    assert restart.kinds == [WorkloadKind.DEPLOYMENT]
    assert restart.selector.matches({"nodesysctl.io/restart": "true"})
    assert not restart.selector.matches({"app": "web"})
    assert restart.namespaces == []


def test_snake_case_names_work_too() -> None:
    spec = NodeSysctlPolicySpec(rollout=RolloutSpec(max_concurrent=3, recheck_interval="10m"))
    assert spec.rollout.max_concurrent_for(100) == 3
    assert spec.model_dump(by_alias=True)["rollout"]["recheckInterval"] == "10m"


@pytest.mark.parametrize(
    ("max_concurrent", "matched", "expected"),
    [
        ("25%", 0, 1),
        ("25%", 3, 1),
        ("25%", 4, 1),
        ("25%", 8, 2),
        ("25%", 103, 25),
        ("100%", 7, 7),
        ("1%", 50, 1),
        (3, 0, 3),
        (3, 100, 3),
    ],
)
def test_max_concurrent_for(max_concurrent: int | str, matched: int, expected: int) -> None:
    rollout = RolloutSpec(max_concurrent=max_concurrent)
    assert rollout.max_concurrent_for(matched) == expected


@given(percent=st.integers(1, 100), matched=st.integers(0, 10_000))
def test_percent_is_at_least_one_and_never_more_than_the_nodes(percent: int, matched: int) -> None:
    allowed = RolloutSpec(max_concurrent=f"{percent}%").max_concurrent_for(matched)
    assert 1 <= allowed <= max(1, matched)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m", 60), ("90s", 90), ("1.5m", 90), ("1h30m", 5400), ("168h", 604800), ("60000ms", 60)],
)
def test_recheck_interval_seconds(text: str, seconds: float) -> None:
    assert RolloutSpec(recheck_interval=text).recheck_interval_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["59s", "169h", "1d", "1 h", "h", "", "-1h", "1h ", "1H"])
def test_recheck_interval_refused(text: str) -> None:
    with pytest.raises(InvalidPolicy, match="recheckInterval must be a Go duration"):
        parse_spec({"rollout": {"recheckInterval": text}})


@pytest.mark.parametrize("value", [0, -1, "0%", "101%", "25", "25 %", "%", "1.5%"])
def test_max_concurrent_refused(value: int | str) -> None:
    with pytest.raises(InvalidPolicy, match="maxConcurrent must be a positive integer"):
        parse_spec({"rollout": {"maxConcurrent": value}})


def test_reserved_ranges_are_the_nodeport_range_then_each_protected_port() -> None:
    ports = PortsSpec(protected_ports=[10250, 2379])
    assert ports.reserved_ranges() == [
        PortRangeSpec(min=30000, max=32767),
        PortRangeSpec(min=10250, max=10250),
        PortRangeSpec(min=2379, max=2379),
    ]


SELECTOR_CASES = [
    ({}, {}, True),
    ({"matchLabels": {"role": "worker"}}, {"role": "worker", "zone": "a"}, True),
    ({"matchLabels": {"role": "worker"}}, {"role": "infra"}, False),
    ({"matchLabels": {"role": ""}}, {}, False),
    ({"matchLabels": {"role": ""}}, {"role": ""}, True),
    (
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
        {"zone": "b"},
        True,
    ),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    (
        {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]},
        {"zone": "a"},
        False,
    ),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, {"gpu": "x"}, False),
    (
        {
            "matchLabels": {"role": "worker"},
            "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}],
        },
        {"role": "worker", "gpu": "1"},
        False,
    ),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_label_selector_matches(
    selector: dict[str, object], labels: dict[str, str], expected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_parse_policy_checks_the_envelope() -> None:
    body = {"apiVersion": "nodesysctl.io/v1", "kind": "NodeSysctlPolicy", "spec": {}}
    with pytest.raises(InvalidPolicy) as refused:
        parse_policy(body)
    assert "apiVersion: Unsupported value" in str(refused.value)
    assert "metadata: Required value" in str(refused.value)


def test_parse_policy_keeps_the_rest_of_the_metadata_and_ignores_kopf_status() -> None:
    policy = parse_policy(
        {
            "apiVersion": "nodesysctl.io/v1alpha1",
            "kind": "NodeSysctlPolicy",
            "metadata": {"name": "p", "uid": "123", "generation": 4},
            "spec": {},
            "status": {"nodes": 3, "kopf": {"progress": {}}},
        }
    )
    assert policy.metadata.name == "p"
    assert policy.status is not None
    assert policy.status.nodes == 3


def test_api_imports_no_kubernetes_client_and_no_kopf() -> None:
    code = "import sys, nodesysctl.api; print(sorted({'kubernetes', 'kopf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("quantity", "value"),
    [
        ("500m", "0.5"),
        ("1", "1"),
        (2, "2"),
        ("1Ki", "1024"),
        ("512Mi", "536870912"),
        ("0.5Gi", "536870912"),
        ("1e3", "1000"),
        ("5E-1", "0.5"),
        (".5", "0.5"),
        ("+2k", "2000"),
        ("-100m", "-0.1"),
        ("10n", "0.00000001"),
    ],
)
def test_quantity_value_is_exact(quantity: int | str, value: str) -> None:
    assert quantity_value(quantity) == Decimal(value)


@pytest.mark.parametrize("text", ["lots", "1e1.5", "1KiB", "", "1 Mi", "0x10"])
def test_quantity_value_refuses_what_kubernetes_cannot_parse(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity"):
        quantity_value(text)


def test_sysctl_dir_is_one_of_two_admin_directories() -> None:
    for directory in SYSCTL_DIRS:
        assert parse_spec({"remediation": {"sysctlDir": directory}}).remediation.sysctl_dir == (
            directory
        )
    for directory in ("/etc", "/.", "//", "/run/sysctl.d", "/etc/sysctl.d/", "/etc//sysctl.d"):
        with pytest.raises(InvalidPolicy, match=r"sysctlDir must be /etc/sysctl\.d or"):
            parse_spec({"remediation": {"sysctlDir": directory}})


@pytest.mark.parametrize(
    ("mode", "persist", "writes"),
    [("Enforce", True, True), ("Enforce", False, False), ("Audit", True, False),
     ("Audit", False, False)],
)  # fmt: skip
def test_only_enforce_with_persist_writes_host_files(
    mode: str, persist: bool, writes: bool
) -> None:
    remediation = parse_spec({"remediation": {"mode": mode, "persist": persist}}).remediation
    assert remediation.writes_host_files() is writes


def test_a_rule_on_a_map_or_a_value_names_where_it_broke() -> None:
    with pytest.raises(InvalidPolicy) as refused:
        parse_spec(
            {
                "nodeSelector": {"matchLabels": {"bad key": "a,b"}},
                "restart": {"selector": {"matchExpressions": [{"key": "a", "operator": "In",
                                                               "values": ["ok", "x=y"]}]}},
            }
        )  # fmt: skip
    assert [problem.split(": ", 1)[0] for problem in refused.value.problems] == [
        "spec.nodeSelector.matchLabels.bad key",
        "spec.restart.selector.matchExpressions[0].values[1]",
    ]
    # A value is checked before its map: the map's own rule waits until its values are valid.
    assert "values must be a label value" in refused.value.problems[0]
