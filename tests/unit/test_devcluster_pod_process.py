"""How the simulated kubelet turns a container into a host process (no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from devcluster.kubelet.process import ReadKeys, container_argv, container_env, downward_field
from devcluster.nodes import SimulatedNode, kernel_format, sysctl_path
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings, build_agent_job
from nodesysctl.planning import CheckOrder, CheckReason


def pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"a": "b"}},
        "spec": {
            "nodeName": "n1",
            "volumes": [
                {"name": "etc", "hostPath": {"path": "/etc/sysctl.d"}},
                {"name": "proc", "hostPath": {"path": "/proc"}},
                {"name": "cm", "configMap": {"name": "x"}},
            ],
            "containers": [container],
            **spec,
        },
    }


AGENT = {
    "name": "agent",
    "command": ["/usr/bin/python3.11", "-m", "nodesysctl.agent"],
    "args": [
        "--sysctl-dir",
        "/host/etc/sysctl.d",
        "--x=/host/etc/sysctl.d/99.conf",
        "--termination-log",
        "/dev/termination-log",
        "--cm",
        "/config",
    ],
    "volumeMounts": [
        {"name": "etc", "mountPath": "/host/etc/sysctl.d"},
        {"name": "proc", "mountPath": "/host/proc"},
        {"name": "cm", "mountPath": "/config"},
    ],
}


def test_a_netns_node_runs_the_container_in_its_netns(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    term = tmp_path / "term"
    argv = container_argv(pod(AGENT), AGENT, node, term)
    assert argv[:4] == ["ip", "netns", "exec", "nsc-abc"]
    assert argv[4] == sys.executable
    root = str(tmp_path / "n1")
    assert argv[5:] == [
        "-m", "nodesysctl.agent",
        "--sysctl-dir", f"{root}/etc/sysctl.d",
        f"--x={root}/etc/sysctl.d/99.conf",
        "--termination-log", str(term),
        "--cm", "/config",  # not a hostPath: left alone
    ]  # fmt: skip


def test_a_node_without_netns_gets_its_fake_proc(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1")
    container = {**AGENT, "args": ["--proc-sys", "/host/proc/sys", "/proc/net"]}
    argv = container_argv(pod(container), container, node, tmp_path / "t")
    root = str(tmp_path / "n1")
    assert argv[0] == sys.executable
    assert argv[3:] == [
        "--proc-sys", f"{root}/proc/sys",
        f"{root}/proc/net",
        "--proc-net", f"{root}/proc/net",  # added: never the host's own
    ]  # fmt: skip


def test_hostpaths_under_proc_stay_real_inside_a_netns(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    assert node.host_path("/proc") == Path("/proc")
    assert node.host_path("/etc/sysctl.d/") == tmp_path / "n1" / "etc" / "sysctl.d"


def test_the_downward_api() -> None:
    p = pod(AGENT, hostNetwork=True)
    assert downward_field(p, "spec.nodeName") == "n1"
    assert downward_field(p, "metadata.labels['a']") == "b"
    assert downward_field(p, "metadata.namespace") == "ns"
    assert downward_field(p, "status.podIP") == "127.0.0.1"


def test_sysctl_names_and_kernel_format() -> None:
    assert sysctl_path("net.ipv4.ip_local_port_range") == "net/ipv4/ip_local_port_range"
    assert kernel_format("net.ipv4.ip_local_port_range", "1024  65000") == "1024\t65000"


def test_only_python_is_replaced_by_this_interpreter(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    for command, expected in (
        ("python", sys.executable),
        ("/usr/local/bin/python3", sys.executable),
        ("python3.12", sys.executable),
        ("python2", "python2"),
        ("/bin/sh", "/bin/sh"),
    ):
        container = {"name": "c", "command": [command]}
        assert container_argv(pod(container), container, node, tmp_path / "t")[4] == expected


def test_a_container_without_command_cannot_start(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    container = {"name": "c", "image": "busybox", "args": ["sleep", "1"]}
    with pytest.raises(ValueError, match="runs no images"):
        container_argv(pod(container), container, node, tmp_path / "t")


def test_the_longest_mount_wins_and_subpaths_are_followed(tmp_path: Path) -> None:
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    container = {
        "name": "c",
        "command": ["/bin/tool"],
        "args": ["/host/etc/99.conf", "/host/var/x", "/host"],
        "volumeMounts": [
            {"name": "root", "mountPath": "/host/"},
            {"name": "etc", "mountPath": "/host/etc", "subPath": "sysctl.d"},
        ],
    }
    p = pod(container)
    p["spec"]["volumes"] = [
        {"name": "root", "hostPath": {"path": "/"}},
        {"name": "etc", "hostPath": {"path": "/etc"}},
    ]
    root = str(tmp_path / "n1")
    assert container_argv(p, container, node, tmp_path / "t")[5:] == [
        f"{root}/etc/sysctl.d/99.conf",
        f"{root}/var/x",
        root,
    ]


def keys(objects: dict[str, dict[str, str]]) -> ReadKeys:
    """configMap/secret reads by name, failing as the kubelet's do when one is missing."""

    def read(namespace: str, ref: dict[str, Any]) -> dict[str, str]:
        if ref["name"] not in objects:
            raise ValueError(f"configmap {namespace}/{ref['name']}: Not Found")
        return objects[ref["name"]]

    return read


def env_of(container: dict[str, Any], **spec: Any) -> dict[str, str]:
    return container_env(
        pod(container, **spec),
        container,
        SimulatedNode("n1", root=Path("/nonexistent"), netns="nsc-abc"),
        host_env={"PATH": "/host/bin", "PYTHONPATH": "/extra", "KUBECONFIG": "/admin"},
        source_root="/src",
        config_map=keys({"cm": {"A": "1", "B": "2"}}),
        secret=keys({"sec": {"TOKEN": "t"}}),
    )


def test_the_env_sits_on_a_minimal_host_env() -> None:
    container = {"name": "c", "command": ["python"]}
    assert env_of(container) == {
        "PATH": "/host/bin",
        "HOME": "/root",
        "HOSTNAME": "p",  # the pod's name, unless hostNetwork
        "PYTHONPATH": "/src:/extra",  # the source root first, so the agent is this checkout's
    }  # and nothing else of the host (no KUBECONFIG)
    assert env_of(container, hostNetwork=True)["HOSTNAME"] == "n1"


def test_env_values_the_downward_api_resources_and_keys() -> None:
    container = {
        "name": "c",
        "command": ["python"],
        "resources": {"limits": {"cpu": "500m"}},
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
            {"secretRef": {"name": "sec"}},
        ],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "B"}}},
            {"name": "NONE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nope"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {"name": "CM_A", "value": "env wins over envFrom"},
        ],
    }
    env = env_of(container)
    assert {
        k: v for k, v in env.items() if k not in ("PATH", "HOME", "HOSTNAME", "PYTHONPATH")
    } == {
        "CM_A": "env wins over envFrom",
        "CM_B": "2",
        "TOKEN": "t",
        "PLAIN": "v",
        "NODE_NAME": "n1",
        "CPU": "500m",
        "MEM": "0",  # no limit set
        "B": "2",
        "T": "t",
    }


def test_a_missing_config_map_fails_the_start() -> None:
    container = {"name": "c", "command": ["python"], "envFrom": [{"configMapRef": {"name": "x"}}]}
    with pytest.raises(ValueError, match="configmap ns/x"):
        env_of(container)


def test_the_agent_jobs_host_root_and_sysctl_dir_map_into_the_nodes_root(tmp_path: Path) -> None:
    job = build_agent_job(
        policy="p",
        policy_uid="uid",
        spec=parse_spec({}),
        order=CheckOrder("n1", CheckReason.NEW, "nsc-p-1-2", "boot"),
        settings=JobSettings(),
    )
    p = job["spec"]["template"]
    p["metadata"] = {"name": "pod", "namespace": "jobs"}
    container = p["spec"]["containers"][0]
    node = SimulatedNode("n1", root=tmp_path / "n1", netns="nsc-abc")
    argv = container_argv(p, container, node, tmp_path / "t")
    assert argv[argv.index("--host-root") + 1] == str(tmp_path / "n1")
    assert argv[argv.index("--sysctl-dir") + 1] == str(tmp_path / "n1" / "etc" / "sysctl.d")
