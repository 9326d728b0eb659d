"""How the simulated kubelet turns a pod's container into a host process: its command line, its
environment, and where the pod's hostPath volumes are on this machine.

Pure: the host's environment and the reads of configMaps and secrets are passed in, so the
rules are unit-tested without a cluster (tests/unit/test_devcluster_pod_process.py).

- ``command + args``, ``python``/``python3``/``python3.X`` replaced by this interpreter; on a
  node with a netns, run through ``ip netns exec <netns>``;
- any argument equal to or below a hostPath volumeMount's ``mountPath`` (also in
  ``--flag=value`` form) is rewritten to the node's host path, the ``terminationMessagePath``
  to a per-pod file; on a node without a netns every ``/proc/...`` argument points into its
  fake tree and ``--proc-sys``/``--proc-net`` are added if missing;
- env: ``env`` (values, downward API ``fieldRef``, ``resourceFieldRef``, configMap/secret keys)
  and ``envFrom`` over a minimal host env (``PATH``, ``HOME``, ``HOSTNAME``, ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..nodes import NODE_IP, SimulatedNode

Json = dict[str, Any]
# (namespace, configMapRef/secretRef or a *KeyRef) -> the object's data; raises ValueError when
# the object is missing and the ref is not optional (the container then fails to start).
ReadKeys = Callable[[str, Json], dict[str, str]]

_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")


def container_argv(
    pod: Json, container: Json, node: SimulatedNode, termination_file: Path
) -> list[str]:
    """The host command line for ``container`` on ``node`` (see the module docstring)."""
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not container.get("command"):
        raise ValueError("the simulated kubelet runs no images: the container needs `command`")
    if _PYTHON.match(os.path.basename(argv[0])):
        argv[0] = sys.executable

    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts: list[tuple[str, str]] = []  # (mountPath in the container, path on this host)
    for mount in container.get("volumeMounts") or []:
        host_path = (volumes.get(mount["name"]) or {}).get("hostPath")
        if host_path:
            target = node.host_path(host_path["path"])
            if mount.get("subPath"):
                target = target / mount["subPath"]
            mounts.append((mount["mountPath"].rstrip("/") or "/", str(target)))
    mounts.sort(key=lambda m: len(m[0]), reverse=True)
    termination_path = container.get("terminationMessagePath") or "/dev/termination-log"

    def rewrite(value: str) -> str:
        if value == termination_path:
            return str(termination_file)
        for mount_path, target in mounts:
            if value == mount_path or value.startswith(mount_path + "/"):
                return target + value[len(mount_path) :]
        if not node.netns and (value == "/proc" or value.startswith("/proc/")):
            return str(node.host_root) + value  # the node's fake /proc
        return value

    out = [argv[0]]
    for arg in argv[1:]:
        if arg.startswith("-") and "=" in arg:
            flag, _, value = arg.partition("=")
            out.append(f"{flag}={rewrite(value)}")
        else:
            out.append(rewrite(arg))
    if not node.netns:  # never let the agent read or write this host's own /proc
        for flag, path in (("--proc-sys", "proc/sys"), ("--proc-net", "proc/net")):
            if not any(a == flag or a.startswith(flag + "=") for a in out):
                out += [flag, str(node.host_root / path)]
    if node.netns:
        out = ["ip", "netns", "exec", node.netns, *out]
    return out


def container_env(
    pod: Json,
    container: Json,
    node: SimulatedNode,
    *,
    host_env: Mapping[str, str],
    source_root: str,
    config_map: ReadKeys,
    secret: ReadKeys,
) -> dict[str, str]:
    """The container's env (with the downward API and configMap/secret keys resolved) on top of
    a minimal host environment; ``source_root`` goes first on ``PYTHONPATH``, so this
    interpreter finds the nodesysctl package."""
    env = {
        "PATH": host_env.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": "/root",
        "HOSTNAME": node.name if pod["spec"].get("hostNetwork") else pod["metadata"]["name"],
        "PYTHONPATH": os.pathsep.join(
            p for p in (source_root, host_env.get("PYTHONPATH", "")) if p
        ),
    }
    namespace = pod["metadata"]["namespace"]
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = config_map(namespace, source["configMapRef"])
        elif "secretRef" in source:
            data = secret(namespace, source["secretRef"])
        else:
            continue
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "valueFrom" in var:
            value = _env_value(pod, container, var["valueFrom"], config_map, secret)
            if value is not None:
                env[var["name"]] = value
    return env


def _env_value(
    pod: Json, container: Json, source: Json, config_map: ReadKeys, secret: ReadKeys
) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return downward_field(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        resource = source["resourceFieldRef"]["resource"]
        kind, _, name = resource.partition(".")
        value = (container.get("resources") or {}).get(kind, {}).get(name)
        return str(value) if value is not None else "0"
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        return config_map(namespace, ref).get(ref["key"])
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return secret(namespace, ref).get(ref["key"])
    return None


def downward_field(pod: Json, path: str) -> str | None:
    """The downward API's fieldRef paths."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        value = (meta.get(match.group(1)) or {}).get(match.group(2))
        return str(value) if value is not None else None
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": NODE_IP,
        "status.hostIPs": NODE_IP,
        "status.podIP": status.get("podIP") or (NODE_IP if spec.get("hostNetwork") else ""),
        "status.podIPs": status.get("podIP") or (NODE_IP if spec.get("hostNetwork") else ""),
    }
    value = simple.get(path)
    return str(value) if value is not None else None
