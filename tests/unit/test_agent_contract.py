"""The agent's JSON contract: spec validation, result shape, the 4 KiB cap, parsing back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from nodesysctl.agent.contract import (
    MAX_BOOT_OVERRIDES,
    MAX_RESULT_BYTES,
    MAX_SOCKETS,
    AgentResult,
    AgentResultError,
    AgentSpec,
    BootOverride,
    ConflictingSocket,
    Mode,
    PortRangeModel,
    Status,
    SysctlState,
    parse_spec_json,
    policy_hint,
)
from nodesysctl.ports import PortRange

SPEC_JSON: dict[str, Any] = {
    "policy": "nodeport-safe",
    "mode": "Enforce",
    "ephemeralRange": {"min": 32768, "max": 60999},
    "reservedRanges": [{"min": 30000, "max": 32767}, {"min": 10250, "max": 10250}],
    "narrowRange": True,
    "reservePorts": True,
    "persist": True,
    "persistFile": "zz-nodesysctl-nodeport-safe.conf",
}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def spec_with(**changes: Any) -> dict[str, Any]:
    return {**SPEC_JSON, **changes}


def test_spec_from_camel_case_json() -> None:
    spec = parse_spec_json(json.dumps(SPEC_JSON))
    assert spec.mode is Mode.ENFORCE
    assert spec.ephemeral == PortRange(32768, 60999)
    assert spec.reserved == (PortRange(30000, 32767), PortRange(10250, 10250))
    assert spec.persist_file_name == "zz-nodesysctl-nodeport-safe.conf"
    assert json.loads(spec.model_dump_json()) == SPEC_JSON


def test_spec_by_field_name_and_defaults() -> None:
    spec = AgentSpec(
        policy="p", mode=Mode.AUDIT, ephemeral_range=PortRangeModel(min=32768, max=60999)
    )
    assert spec.reserved == ()
    assert (spec.narrow_range, spec.reserve_ports, spec.persist) == (True, True, True)
    assert spec.persist_file_name == "zz-nodesysctl-p.conf"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "Fix"}, "mode: Input should be 'Enforce' or 'Audit'"),
        ({"ephemeralRange": {"min": 60999, "max": 32768}}, "min 60999 is greater than max 32768"),
        ({"ephemeralRange": {"min": 0, "max": 10}}, "ephemeralRange.min"),
        ({"reservedRanges": [{"min": 1, "max": 70000}]}, "reservedRanges.0.max"),
        ({"policy": "Bad_Name"}, "is not a valid Kubernetes object name"),
        ({"persistFile": "../etc/passwd.conf"}, "must be a plain file name"),
        ({"persistFile": "99-x.txt"}, "must be a plain file name"),
        ({"reservedRanges": [{"min": 1024, "max": 65535}]}, "cover the whole ephemeralRange"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_explained(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="invalid agent spec") as info:
        parse_spec_json(json.dumps(spec_with(**changes)))
    assert message in str(info.value)


def test_spec_that_is_not_json() -> None:
    with pytest.raises(ValueError, match="invalid agent spec: spec: Invalid JSON"):
        parse_spec_json("{not json")


def test_policy_hint() -> None:
    assert policy_hint(json.dumps({"policy": "x", "mode": "nope"})) == "x"
    assert policy_hint("[1]") == ""
    assert policy_hint("garbage") == ""


def sample_result(**changes: Any) -> AgentResult:
    fields: dict[str, Any] = {
        "policy": "nodeport-safe",
        "node": "worker-1",
        "mode": Mode.ENFORCE,
        "status": Status.REMEDIATED,
        "before": SysctlState(
            ip_local_port_range=PortRangeModel(min=1024, max=65000),
            ip_local_reserved_ports="8080",
        ),
        "after": SysctlState(
            ip_local_port_range=PortRangeModel(min=32768, max=60999),
            ip_local_reserved_ports="8080,10250,30000-32767",
            persisted=True,
        ),
        "drift": ["range too wide"],
        "actions": ["wrote it"],
        "conflicting_sockets": [
            ConflictingSocket(proto="tcp", local_address="0.0.0.0", port=31000, state="LISTEN")
        ],
        "conflicting_socket_count": 1,
        "agent_version": "0.1.0",
        "checked_at": NOW,
    }
    return AgentResult(**{**fields, **changes})


def test_result_json_shape() -> None:
    data = json.loads(sample_result().to_json())
    assert data == {
        "policy": "nodeport-safe",
        "node": "worker-1",
        "mode": "Enforce",
        "status": "Remediated",
        "before": {
            "ipLocalPortRange": {"min": 1024, "max": 65000},
            "ipLocalReservedPorts": "8080",
            "persisted": False,
        },
        "after": {
            "ipLocalPortRange": {"min": 32768, "max": 60999},
            "ipLocalReservedPorts": "8080,10250,30000-32767",
            "persisted": True,
        },
        "drift": ["range too wide"],
        "actions": ["wrote it"],
        "conflictingSockets": [
            {"proto": "tcp", "localAddress": "0.0.0.0", "port": 31000, "state": "LISTEN"}
        ],
        "conflictingSocketCount": 1,
        "errors": [],
        "agentVersion": "0.1.0",
        "checkedAt": "2026-01-02T03:04:05Z",
    }
    assert "\n" not in sample_result().to_json()


def test_checked_at_is_utc() -> None:
    local = NOW.astimezone(timezone(timedelta(hours=8)))
    assert json.loads(sample_result(checked_at=local).to_json())["checkedAt"] == (
        "2026-01-02T03:04:05Z"
    )
    with pytest.raises(ValueError, match="time zone"):
        sample_result(checked_at=NOW.replace(tzinfo=None))


def test_result_round_trips_through_the_termination_message() -> None:
    result = sample_result()
    assert AgentResult.parse_termination_message(result.to_json() + "\n") == result


def test_parse_takes_the_last_json_line_of_a_log_tail() -> None:
    # terminationMessagePolicy: FallbackToLogsOnError gives the log tail instead of the file.
    text = "2026-01-02 INFO starting\n" + sample_result().to_json() + "\n"
    assert AgentResult.parse_termination_message(text).status is Status.REMEDIATED


def test_parse_tolerates_fields_from_a_newer_agent() -> None:
    data = json.loads(sample_result().to_json())
    data["futureField"] = {"x": 1}
    assert AgentResult.parse_termination_message(json.dumps(data)).node == "worker-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the termination message is empty"),
        ("   \n", "the termination message is empty"),
        ("Error: OOMKilled", "not an agent result"),
        ('{"policy": "p"}', "status: Field required"),
        ('{"policy": "p", "status": "Happy", "checkedAt": "2026-01-02T03:04:05Z"}', "status"),
        ("[1, 2]", "not an agent result"),
    ],
)
def test_parse_garbage_raises_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(AgentResultError, match=r"not an agent result|empty") as info:
        AgentResult.parse_termination_message(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_long_lists_are_capped_on_construction() -> None:
    sockets = [
        ConflictingSocket(proto="tcp", local_address="10.0.0.1", port=30000 + i, state="LISTEN")
        for i in range(50)
    ]
    result = sample_result(
        conflicting_sockets=sockets, conflicting_socket_count=50, drift=[f"d{i}" for i in range(30)]
    )
    assert len(result.conflicting_sockets) == MAX_SOCKETS
    assert result.conflicting_socket_count == 50
    assert len(result.drift) == 10
    assert result.drift[-1] == "… and 21 more"


@pytest.mark.parametrize("char", ["x", "\U0001f525", "\x01", '"'])
def test_worst_case_result_fits_in_a_termination_message(char: str) -> None:
    # Every string as long as allowed, in the character that costs the most JSON bytes.
    long = char * 5000
    socket = ConflictingSocket(
        proto="tcp6", local_address="ffff:" * 7 + "ffff", port=65535, state="ESTABLISHED"
    )
    state = SysctlState(
        ip_local_port_range=PortRangeModel(min=65535, max=65535), ip_local_reserved_ports=long
    )
    result = sample_result(
        policy=long,
        node=long,
        status=Status.FAILED,
        before=state,
        after=state,
        drift=[long] * 100,
        actions=[long] * 100,
        errors=[long] * 100,
        conflicting_sockets=[socket] * 100,
        conflicting_socket_count=10**9,
        agent_version=long,
    )
    text = result.to_json()
    assert len(text.encode()) <= MAX_RESULT_BYTES < 4096
    parsed = AgentResult.parse_termination_message(text)
    # What matters most survives: the status, the counts and the first error.
    assert parsed.status is Status.FAILED
    assert parsed.conflicting_socket_count == 10**9
    assert parsed.errors
    assert parsed.errors[0].startswith(char)


def test_a_typical_large_result_keeps_everything_but_the_excess() -> None:
    sockets = [
        ConflictingSocket(proto="tcp", local_address="10.0.0.1", port=30000 + i, state="LISTEN")
        for i in range(MAX_SOCKETS)
    ]
    result = sample_result(conflicting_sockets=sockets, conflicting_socket_count=MAX_SOCKETS)
    parsed = AgentResult.parse_termination_message(result.to_json())
    assert len(parsed.conflicting_sockets) == MAX_SOCKETS


# --- fields added for the boot-order check and the socket kinds (issue 12) -------------------


def test_node_port_range_tells_node_ports_from_protected_ports() -> None:
    spec = parse_spec_json(json.dumps(spec_with(nodePortRange={"min": 30000, "max": 32767})))
    assert spec.node_ports == (PortRange(30000, 32767),)
    assert spec.protected == (PortRange(10250, 10250),)
    assert json.loads(spec.model_dump_json())["nodePortRange"] == {"min": 30000, "max": 32767}
    # Without it (an older operator), the ranges of more than one port are the NodePorts.
    older = parse_spec_json(json.dumps(SPEC_JSON))
    assert older.node_port_range is None
    assert older.node_ports == (PortRange(30000, 32767),)
    assert older.protected == (PortRange(10250, 10250),)
    assert "nodePortRange" not in older.model_dump_json()


def test_new_result_fields_round_trip_and_are_left_out_while_empty() -> None:
    socket = ConflictingSocket(
        proto="tcp",
        local_address="10.0.0.5",
        port=30123,
        state="ESTABLISHED",
        kind="EphemeralUse",
        remote_address="10.96.0.1",
        remote_port=443,
    )
    override = BootOverride(file="/etc/sysctl.d/zzz.conf", key="net.ipv4.ip_local_port_range")
    result = sample_result(
        status=Status.DRIFTED,
        conflicting_sockets=[socket],
        service_socket_count=2,
        boot_overrides=[override],
        boot_override_count=1,
        warnings=["cannot tell"],
    )
    data = json.loads(result.to_json())
    assert data["conflictingSockets"][0]["remoteAddress"] == "10.96.0.1"
    assert data["bootOverrides"] == [
        {"file": "/etc/sysctl.d/zzz.conf", "key": "net.ipv4.ip_local_port_range"}
    ]
    assert (data["serviceSocketCount"], data["bootOverrideCount"]) == (2, 1)
    assert AgentResult.parse_termination_message(result.to_json()) == result
    # An operator that predates them reads the result all the same (unknown keys ignored).
    assert AgentResult.model_validate({**data, "somethingNewer": 1}) == result


def test_boot_overrides_are_capped_on_construction() -> None:
    overrides = [BootOverride(file=f"/etc/sysctl.d/z{i}.conf", key="k") for i in range(9)]
    result = sample_result(boot_overrides=overrides, boot_override_count=9)
    assert len(result.boot_overrides) == MAX_BOOT_OVERRIDES
    assert result.boot_override_count == 9


@pytest.mark.parametrize("char", ["x", "\U0001f525", "\x01", '"'])
def test_worst_case_result_with_every_new_field_fits(char: str) -> None:
    long = char * 5000
    address = "ffff:" * 7 + "ffff"
    socket = ConflictingSocket(
        proto="tcp6",
        local_address=address,
        port=65535,
        state="ESTABLISHED",
        kind=long,
        remote_address=address,
        remote_port=65535,
    )
    state = SysctlState(
        ip_local_port_range=PortRangeModel(min=65535, max=65535), ip_local_reserved_ports=long
    )
    result = sample_result(
        policy=long,
        node=long,
        status=Status.FAILED,
        before=state,
        after=state,
        drift=[long] * 100,
        actions=[long] * 100,
        errors=[long] * 100,
        warnings=[long] * 100,
        conflicting_sockets=[socket] * 100,
        conflicting_socket_count=10**9,
        service_socket_count=10**9,
        boot_overrides=[BootOverride(file=long, key=long, value=long)] * 100,
        boot_override_count=10**9,
        agent_version=long,
    )
    text = result.to_json()
    assert len(text.encode()) <= MAX_RESULT_BYTES
    parsed = AgentResult.parse_termination_message(text)
    assert (parsed.conflicting_socket_count, parsed.boot_override_count) == (10**9, 10**9)
    assert parsed.errors[0].startswith(char)
    assert parsed.boot_overrides  # at least the first override survives, cut
