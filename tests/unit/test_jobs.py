"""Rendering of agent Jobs and restart patches."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE, AgentSpec, Mode
from nodesysctl.agent.run import AgentPaths
from nodesysctl.api import InvalidPolicy, parse_spec
from nodesysctl.compose import PolicyRanges, target_of
from nodesysctl.jobs import JobSettings, build_agent_job, build_restart_patch
from nodesysctl.labels import LABEL_SPEC_HASH, RESTART_WAVE, RESTARTED_AT
from nodesysctl.planning import (
    CheckOrder,
    CheckReason,
    HostDirs,
    NodeFacts,
    NodeResult,
    NodeState,
    host_dirs,
)
from nodesysctl.ports import PortRange

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def render(**spec_overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"ports": {"protectedPorts": [10250]}}
    raw.update(spec_overrides)
    return build_agent_job(
        policy="nodeport-safe",
        policy_uid="uid-1",
        spec=parse_spec(raw),
        order=CheckOrder("worker-1", CheckReason.NEW, "nsc-nodeport-safe-abc-def", "boot-1"),
        settings=JobSettings(namespace="jobs", image="example/agent:1"),
    )


def test_job_is_pinned_privileged_host_network_without_token() -> None:
    job = render()
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["worker-1"]
    assert pod["hostNetwork"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    assert container["securityContext"]["privileged"] is True
    assert container["image"] == "example/agent:1"
    assert job["metadata"]["namespace"] == "jobs"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["spec"]["activeDeadlineSeconds"] == 120
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 600


def test_job_passes_the_agent_spec_and_mounts_sysctl_dir() -> None:
    job = render()
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    spec = AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))
    assert spec.policy == "nodeport-safe"
    assert [(r.min, r.max) for r in spec.reserved_ranges] == [(30000, 32767), (10250, 10250)]
    assert pod["volumes"][0]["hostPath"]["path"] == "/etc/sysctl.d"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/host/etc/sysctl.d"


def test_no_host_mount_without_persistence_and_tolerations_pass_through() -> None:
    toleration = {
        "key": "node-role.kubernetes.io/control-plane",
        "operator": "Exists",
        "effect": "NoSchedule",
    }
    job = render(
        remediation={"persist": False},
        job={"tolerations": [toleration], "priorityClassName": "system-node-critical"},
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == []
    assert pod["tolerations"] == [toleration]  # exactly the corev1 shape, nothing added
    assert pod["priorityClassName"] == "system-node-critical"


@pytest.mark.parametrize(
    ("mode", "persist", "mounted", "read_only"),
    [
        ("Enforce", True, True, False),  # writes the persisted file
        # Changed on purpose with issue 12: an Audit check (agent spec version 2) checks the
        # policy's own values and reads no file of its own, so it no longer mounts the
        # directory (the host's / stays mounted read-only, for the boot-order check).
        ("Audit", True, False, None),
        ("Enforce", False, False, None),  # never opens the directory
        ("Audit", False, False, None),
    ],
)
def test_sysctl_dir_is_mounted_read_write_only_when_the_agent_writes(
    mode: str, persist: bool, mounted: bool, read_only: bool | None
) -> None:
    pod = render(remediation={"mode": mode, "persist": persist})["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert args[args.index("--sysctl-dir") + 1] == "/host/etc/sysctl.d"
    if not mounted:
        # (Only the host's / may be mounted, read-only, for the boot-order check.)
        assert [v for v in pod["volumes"] if v["hostPath"]["path"] != "/"] == []
        assert [m for m in container["volumeMounts"] if m["mountPath"] != "/host"] == []
        return
    # The sysctlDir's own volume and mount (the host's / is mounted too, read-only, for the
    # boot-order check: test_the_jobs_host_paths_are_exactly_these).
    [volume] = [v for v in pod["volumes"] if v["hostPath"]["path"] != "/"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    # Directory, not DirectoryOrCreate: a missing directory fails the pod; the host is unchanged.
    assert volume["hostPath"] == {"path": "/etc/sysctl.d", "type": "Directory"}
    assert mount == {
        "name": volume["name"],
        "mountPath": "/host/etc/sysctl.d",
        "readOnly": read_only,
    }


def test_the_other_sysctl_dir_is_mounted_where_the_agent_maps_it_back_to_the_host() -> None:
    pod = render(remediation={"sysctlDir": "/usr/local/lib/sysctl.d"})["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["volumes"][0]["hostPath"]["path"] == "/usr/local/lib/sysctl.d"
    assert container["volumeMounts"][0]["mountPath"] == "/host/usr/local/lib/sysctl.d"
    args = container["args"]
    paths = AgentPaths(sysctl_dir=Path(args[args.index("--sysctl-dir") + 1]))
    # The agent's default --host-root: its messages name /usr/local/lib/sysctl.d/...
    assert paths.effective_host_root() == Path("/host")


def test_resources_default_unless_the_policy_sets_them() -> None:
    default = render()["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert default["limits"]["memory"] == "128Mi"
    custom = render(job={"resources": {"requests": {"cpu": "50m"}}})
    assert custom["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "50m"}
    }


def test_restart_patch_is_what_kubectl_rollout_restart_sets() -> None:
    patch = build_restart_patch(NOW, "wave1")
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations[RESTARTED_AT] == "2026-11-25T12:00:00Z"
    assert annotations[RESTART_WAVE] == "wave1"


def test_the_hosts_root_is_mounted_read_only_for_the_boot_order_check() -> None:
    pod = render()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    root = mounts["/host"]
    # Type Directory: / always exists, and nothing is ever created on the host; read-only.
    assert volumes[root["name"]]["hostPath"] == {"path": "/", "type": "Directory"}
    assert root["readOnly"] is True
    args = container["args"]
    assert args[args.index("--host-root") + 1] == "/host"
    assert args[args.index("--sysctl-dir") + 1].startswith("/host/")
    # The sysctl directory stays its own (writable) mount on top of it.
    assert not mounts["/host/etc/sysctl.d"].get("readOnly")


def test_the_agent_is_told_which_reserved_range_is_the_node_port_range() -> None:
    args = render(ports={"nodePortRange": {"min": 30000, "max": 30999}, "protectedPorts": [9100]})[
        "spec"
    ]["template"]["spec"]["containers"][0]["args"]
    spec = AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))
    assert spec.node_ports == (PortRange(30000, 30999),)
    assert spec.protected == (PortRange(9100, 9100),)


def test_without_persistence_no_host_root_is_passed() -> None:
    args = render(remediation={"persist": False})["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--host-root" not in args


def test_the_jobs_host_paths_are_exactly_these() -> None:
    # checkov has no finding for a read-only hostPath of /: any other host path must show here.
    pod = render()["spec"]["template"]["spec"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert sorted(host_paths.values()) == ["/", "/etc/sysctl.d"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    root = next(name for name, path in host_paths.items() if path == "/")
    assert mounts[root]["readOnly"] is True


def test_whatever_a_policy_sets_the_pod_keeps_the_operators_shape() -> None:
    """Every knob a policy writer has, turned at once (the image and the PriorityClass as if the
    operator's allowlists named them): the pod still runs the operator's command in one
    container, without a ServiceAccount token or the host's PID and IPC namespaces, with the
    host's / read-only and one of the two sysctl directories as its only host paths. A field
    the API does not have (`job.hostPID`) never gets this far."""
    allowed_image = "registry.example/agent@sha256:" + "b" * 64
    job = render(
        remediation={"mode": "Enforce", "persist": True, "sysctlDir": "/usr/local/lib/sysctl.d"},
        job={
            "image": allowed_image,
            "priorityClassName": "nodesysctl-agent",
            "tolerations": [{"operator": "Exists"}],
            "resources": {
                "requests": {"cpu": 1, "memory": "512Mi"},
                "limits": {"cpu": 1, "memory": "512Mi"},
            },
            "activeDeadlineSeconds": 3600,
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 604800,
        },
        rollout={"maxConcurrent": "100%"},
        restart={"selector": {}},
    )
    pod = job["spec"]["template"]["spec"]
    assert set(pod) == {
        "affinity", "hostNetwork", "dnsPolicy", "restartPolicy", "automountServiceAccountToken",
        "enableServiceLinks", "tolerations", "containers", "volumes", "priorityClassName",
    }  # fmt: skip
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [container] = pod["containers"]
    assert container["image"] == allowed_image
    assert container["command"] == ["python", "-m", "nodesysctl.agent"]
    assert container["securityContext"] == {
        "privileged": True,
        "runAsUser": 0,
        "readOnlyRootFilesystem": True,
    }
    host_paths = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"]}
    assert len(host_paths) == len(pod["volumes"])  # no volume of another kind
    assert host_paths == {"/": "Directory", "/usr/local/lib/sysctl.d": "Directory"}
    mounts = {m["mountPath"]: m["readOnly"] for m in container["volumeMounts"]}
    assert mounts == {"/host": True, "/host/usr/local/lib/sysctl.d": False}
    # What the policy says reaches the node only as the agent's validated input.
    args = container["args"]
    AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))
    with pytest.raises(InvalidPolicy, match=r"spec\.job\.hostPID"):
        parse_spec({"job": {"hostPID": True}})


def agent_spec_of(job: dict[str, Any]) -> AgentSpec:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return AgentSpec.model_validate(json.loads(args[args.index("--spec-json") + 1]))


def test_an_enforce_check_without_persistence_mounts_the_dir_only_to_remove_our_file() -> None:
    spec = parse_spec({"remediation": {"persist": False}})
    order = CheckOrder("worker-1", CheckReason.NEW, "nsc-x", "boot-1")
    target = target_of([PolicyRanges("p", "", spec)])
    earlier = NodeResult(NodeState.COMPLIANT, "h", "b", NOW, "j", sysctl_dirs=("/etc/sysctl.d",))
    fresh = NodeResult(NodeState.COMPLIANT, "h", "b", NOW, "j", sysctl_dirs=())

    def volumes(*results: NodeResult) -> list[Any]:
        node = NodeFacts("worker-1", {}, "b", {f"p{i}": r for i, r in enumerate(results)})
        job = build_agent_job(
            policy="p", policy_uid="u", spec=spec, order=order, settings=JobSettings(),
            target=target, dirs=host_dirs(node, target),
        )  # fmt: skip
        return [v["hostPath"] for v in job["spec"]["template"]["spec"]["volumes"]]

    assert volumes(fresh) == []  # no file of ours can be there
    assert volumes(earlier) == [{"path": "/etc/sysctl.d", "type": "Directory"}]  # it persisted
    legacy = NodeResult(NodeState.COMPLIANT, "h", "b", NOW, "j")  # predates the record
    assert volumes(legacy) == [{"path": "/etc/sysctl.d", "type": "Directory"}]
    spec_file = agent_spec_of(render(remediation={"persist": False}))
    assert (spec_file.spec_version, spec_file.persist, spec_file.persist_file_name) == (
        2,
        False,
        COMPOSED_PERSIST_FILE,
    )


def test_a_composed_target_is_what_the_agent_applies_and_other_dirs_are_mounted_to_clean() -> None:
    a = PolicyRanges("a", "2026-11-01T00:00:00Z", parse_spec({"remediation": {}}))
    b = PolicyRanges(
        "nodeport-safe",
        "2026-11-02T00:00:00Z",
        parse_spec({"ports": {"ephemeralRange": {"min": 40000, "max": 50000}}}),
    )
    job = build_agent_job(
        policy="nodeport-safe",
        policy_uid="uid-1",
        spec=b.spec,
        order=CheckOrder("worker-1", CheckReason.NEW, "nsc-x", "boot-1"),
        settings=JobSettings(namespace="jobs"),
        target=target_of([a, b]),
        dirs=HostDirs("/etc/sysctl.d", True, ("/usr/local/lib/sysctl.d",)),
        check_hash="cafe0123",
    )
    spec = agent_spec_of(job)
    assert spec.policies == ["a", "nodeport-safe"]
    assert spec.ephemeral == PortRange(40000, 50000)
    assert spec.mode is Mode.ENFORCE
    assert job["metadata"]["labels"][LABEL_SPEC_HASH] == "cafe0123"
    pod = job["spec"]["template"]["spec"]
    assert [
        (v["hostPath"]["path"], m["mountPath"])
        for v, m in zip(pod["volumes"], pod["containers"][0]["volumeMounts"], strict=True)
    ] == [
        ("/etc/sysctl.d", "/host/etc/sysctl.d"),
        ("/usr/local/lib/sysctl.d", "/host/usr/local/lib/sysctl.d"),
        ("/", "/host"),  # read-only, for the boot-order check
    ]
    assert pod["volumes"][1]["hostPath"]["type"] == "DirectoryOrCreate"
    args = pod["containers"][0]["args"]
    assert args[args.index("--sysctl-dir") + 1] == "/host/etc/sysctl.d"
    assert args[args.index("--clean-dir") + 1] == "/host/usr/local/lib/sysctl.d"
    assert args.count("--clean-dir") == 1  # the sysctlDir itself is not cleaned


def test_an_audit_check_is_the_policys_own_values_and_writes_nothing() -> None:
    spec = agent_spec_of(render(remediation={"mode": "Audit"}))
    # persist: whether the boot-order check asks about the values; no file is read or written.
    assert (spec.mode, spec.persist, spec.policies) == (Mode.AUDIT, True, [])
    assert spec.ephemeral == PortRange(32768, 60999)
    assert not spec.composed
