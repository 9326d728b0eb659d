"""How the simulated kubelet turns a container into a host process (no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from devcluster.kubelet.process import container_argv, downward_field
from devcluster.nodes import SimulatedNode, kernel_format, sysctl_path


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
