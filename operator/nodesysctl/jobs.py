"""Pure builders of the agent Jobs and of the patches the operator writes to Nodes (the
per-node result annotation) and to workloads (the rollout restart).

Each `build_*` function returns a plain dict ready for the API, so the rendering is
unit-tested (and reviewed) without a cluster, the way dask-kubernetes' operator does it. The
policy's own status is built in `nodesysctl.policy_status`.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from nodesysctl import GROUP, KIND, VERSION
from nodesysctl.agent.contract import PERSIST_FILE_PATTERN, SPEC_VERSION, AgentSpec
from nodesysctl.agent.run import HOST_MOUNT_ROOT
from nodesysctl.api import Mode, NodeSysctlPolicySpec
from nodesysctl.availability import AVAILABLE, NodeAvailability, agent_tolerations
from nodesysctl.compose import NodeTarget, PolicyRanges, target_of
from nodesysctl.labels import (
    AGENT_APP,
    ANNOTATION_BOOT_ID,
    ANNOTATION_NODE,
    ANNOTATION_REASON,
    ANNOTATION_RESULT_PREFIX,
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_NODE_HASH,
    LABEL_POLICY,
    LABEL_SPEC_HASH,
    MANAGED_BY,
    RESTART_WAVE,
    RESTARTED_AT,
)
from nodesysctl.planning import (
    CheckOrder,
    HostDirs,
    NodeResult,
    format_time,
    short_hash,
    spec_hash,
)

# The operator's defaults for every Job, defined here once: `nodesysctl.config` (flags and
# environment) and `JobSettings` both take them from here.
DEFAULT_JOB_NAMESPACE = "nodesysctl-jobs"
DEFAULT_AGENT_IMAGE = "ghcr.io/nodesysctl/nodesysctl:0.1.0"
DEFAULT_AGENT_PYTHON = "python"

# Where the host's / is mounted, read-only (`host_root_volume`).
HOST_ROOT = str(HOST_MOUNT_ROOT)
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_AGENT_RESOURCES = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"cpu": "200m", "memory": "128Mi"},
}


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """Operator-wide settings that shape every agent Job.

    `allowed_images` and `allowed_priority_classes`: what a policy's `job.image` and
    `job.priorityClassName` may name besides `image` and no class (`nodesysctl.admission`)."""

    namespace: str = DEFAULT_JOB_NAMESPACE
    image: str = DEFAULT_AGENT_IMAGE
    python: str = DEFAULT_AGENT_PYTHON
    allowed_images: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()


def persist_file_name(policy: str) -> str:
    """The per-policy file of agent spec version 1 (what the agent migrates from)."""
    return PERSIST_FILE_PATTERN.format(policy=policy)


def build_agent_spec(
    policy: str, spec: NodeSysctlPolicySpec, target: NodeTarget | None = None
) -> AgentSpec:
    """The agent's input for one check of `policy` on one node (spec version 2).

    Enforce: the node's composed `target` (`nodesysctl.compose`; the policy alone when None).
    Audit: the policy's own values, checked and never written, no file read.
    """
    if spec.remediation.mode == Mode.AUDIT:
        ports = spec.ports.ephemeral_range
        return AgentSpec.model_validate(
            {
                "specVersion": SPEC_VERSION,
                "policy": policy,
                "mode": str(Mode.AUDIT),
                "ephemeralRange": {"min": ports.min, "max": ports.max},
                "reservedRanges": [
                    {"min": r.min, "max": r.max} for r in spec.ports.reserved_ranges()
                ],
                "narrowRange": spec.remediation.narrow_range,
                "reservePorts": spec.remediation.reserve_ports,
                # Persisting is what the boot-order check asks about; Audit writes no file.
                "persist": spec.remediation.persist,
                "nodePortRange": {
                    "min": spec.ports.node_port_range.min,
                    "max": spec.ports.node_port_range.max,
                },
            }
        )
    if target is None:
        target = target_of([PolicyRanges(policy, "", spec)])
    return build_target_spec(policy, target)


def build_target_spec(policy: str, target: NodeTarget) -> AgentSpec:
    """An Enforce check that applies `target` (run by `policy`'s Job)."""
    raw: dict[str, Any] = {
        "specVersion": SPEC_VERSION,
        "policy": policy,
        "mode": str(Mode.ENFORCE),
        "reservedRanges": [{"min": r.lo, "max": r.hi} for r in target.reserved],
        "narrowRange": target.narrow_range,
        "reservePorts": target.reserve_ports,
        "persist": target.persist,
        "policies": list(target.policies),
    }
    if target.ephemeral is not None:
        raw["ephemeralRange"] = {"min": target.ephemeral.lo, "max": target.ephemeral.hi}
    if len(target.node_ports) == 1:  # members with different NodePort ranges: the agent's
        [ports] = target.node_ports  # rule (every multi-port reserved range) tells them apart
        raw["nodePortRange"] = {"min": ports.lo, "max": ports.hi}
    return AgentSpec.model_validate(raw)


def pin_to_node(node: str) -> dict[str, Any]:
    """Pod affinity that pins a pod to one node the way the DaemonSet controller does: unlike
    `nodeName`, the scheduler still honours taints (so tolerations matter), cordons and
    resource fit. `nodesysctl.availability` judges nodes by exactly these rules: change one,
    change the other."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    required = {"nodeSelectorTerms": [term]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


def owner_reference(policy: str, uid: str) -> dict[str, Any]:
    # Jobs are owned by the (cluster-scoped) policy so the garbage collector removes them
    # with it, even if the operator is down when the policy is deleted.
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": policy,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": False,
    }


def job_labels(policy: str, node: str, current_spec_hash: str) -> dict[str, str]:
    return {
        LABEL_APP: AGENT_APP,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POLICY: policy,
        # Node names may be 253 characters long; label values only 63.
        LABEL_NODE_HASH: short_hash(node, length=12),
        LABEL_SPEC_HASH: current_spec_hash,
    }


def mount_path(host_dir: str) -> str:
    """Where a host directory is mounted in the agent's pod: the host's path below
    HOST_MOUNT_ROOT, where the agent (its default --host-root) maps paths back to the host's in
    its messages."""
    return f"{HOST_MOUNT_ROOT}{host_dir}"


def agent_sysctl_dir(spec: NodeSysctlPolicySpec) -> str:
    """Where the agent finds the policy's sysctlDir."""
    return mount_path(spec.remediation.sysctl_dir)


def sysctl_dir_volumes(
    agent: AgentSpec, sysctl_dir: str, dirs: HostDirs | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """The hostPath volumes, mounts and extra agent arguments for the host directories a
    check opens.

    Only an Enforce check opens any (Audit reads no file): the composed target's directory
    when it persists there, or when a file of ours may be there to remove (`dirs.mounted`), and
    the directories to clean (a sysctlDir no longer used, `dirs.clean`), read-write. The
    sysctlDir must exist (`type: Directory`: a missing one fails the pod instead of being
    created on the host). A directory to clean is one nodesysctl wrote into, so it exists; if
    it was removed since, it is created empty rather than failing every later check of the node
    (which would keep it recorded, and failing, forever).
    """
    if agent.mode is not Mode.ENFORCE:
        return [], [], []
    if dirs is None:
        dirs = HostDirs(sysctl_dir, mounted=agent.persist)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    extra_args: list[str] = []
    if dirs.mounted:
        volumes.append(
            {"name": "host-sysctl-d", "hostPath": {"path": sysctl_dir, "type": "Directory"}}
        )
        mounts.append(
            {"name": "host-sysctl-d", "mountPath": mount_path(sysctl_dir), "readOnly": False}
        )
    for index, host_dir in enumerate(d for d in dirs.clean if d != sysctl_dir):
        name = f"host-clean-{index}"
        volumes.append({"name": name, "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}})
        mounts.append({"name": name, "mountPath": mount_path(host_dir), "readOnly": False})
        extra_args += ["--clean-dir", mount_path(host_dir)]
    return volumes, mounts, extra_args


def host_root_volume(persist: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The host's / read-only at HOST_ROOT, for the boot-order check, when persisting.

    The check reads the systemd-sysctl search path (/etc/sysctl.d, /run/sysctl.d,
    /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, /lib/sysctl.d) and what links there lead to
    (Debian's 99-sysctl.conf -> ../sysctl.conf). One mount of / and not one per directory: most
    of those directories do not exist on a given node, a hostPath of type Directory fails the pod
    when its path is missing, and one without a type (or DirectoryOrCreate) has the runtime
    create it on the host; / always exists. The sysctlDir mount sits on top of it (runtimes mount
    the shallower path first). The agent reads it only through `nodesysctl.agent.hostfs`."""
    if not persist:
        return [], []
    volume = {"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}}
    mount = {"name": "host-root", "mountPath": HOST_ROOT, "readOnly": True}
    return [volume], [mount]


def build_agent_job(
    *,
    policy: str,
    policy_uid: str,
    spec: NodeSysctlPolicySpec,
    order: CheckOrder,
    settings: JobSettings,
    target: NodeTarget | None = None,
    dirs: HostDirs | None = None,
    check_hash: str = "",
    node: NodeAvailability = AVAILABLE,
) -> dict[str, Any]:
    """A privileged, host-network Job that checks (and in Enforce mode fixes) one node.

    `target`: the node's composition (`build_agent_spec`); `dirs`: which host sysctl
    directories the check opens (`planning.host_dirs`; without it, the target's directory
    when it persists); `check_hash`: the check's spec hash for the label
    (`planning.node_spec_hash`; the policy's own `spec_hash` when empty); `node`: the node's
    availability facts, whose readiness taints the pod tolerates (`agent_tolerations`). The
    pod's other tolerations, image and limits are the policy's.

    The admission fence admits this shape and nothing else in the job namespace
    (manifests/base/fence.yaml, nodesysctl-job-namespace-agent-jobs: the image, the command, the
    arguments but the spec, the one variable, the volumes and mounts, the pod and container
    fields): change the two together (tests/unit/test_fence_manifests.py and
    tests/integration/test_fence.py hold them to each other).
    """
    labels = job_labels(policy, order.node, check_hash or spec_hash(spec))
    agent = build_agent_spec(policy, spec, target)
    if target is None and agent.mode is Mode.ENFORCE:
        target = target_of([PolicyRanges(policy, "", spec)])
    sysctl_dir = target.sysctl_dir if target is not None else spec.remediation.sysctl_dir
    volumes, mounts, extra_args = sysctl_dir_volumes(agent, sysctl_dir, dirs)
    root_volumes, root_mounts = host_root_volume(agent.persist)
    volumes += root_volumes
    mounts += root_mounts
    container: dict[str, Any] = {
        "name": "agent",
        "image": spec.job.image or settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [settings.python, "-m", "nodesysctl.agent"],
        "args": [
            "--spec-json",
            agent.model_dump_json(by_alias=True),
            "--proc-sys",
            "/proc/sys",
            "--sysctl-dir",
            mount_path(sysctl_dir),
            *extra_args,
            *(["--host-root", HOST_ROOT] if root_mounts else []),
            "--termination-log",
            TERMINATION_LOG,
        ],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        # Privileged is the point: with hostNetwork, /proc/sys/net is the host's, and only a
        # privileged container may write it. Nothing else is granted.
        "securityContext": {
            "privileged": True,
            "runAsUser": 0,
            "readOnlyRootFilesystem": True,
        },
        "resources": spec.job.resources.model_dump(mode="json", exclude_defaults=True)
        or DEFAULT_AGENT_RESOURCES,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "affinity": pin_to_node(order.node),
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The same tolerations `nodesysctl.availability.judge` decides with.
        "tolerations": [
            t.model_dump(mode="json", by_alias=True, exclude_none=True)
            for t in agent_tolerations(spec, node)
        ],
        "containers": [container],
        "volumes": volumes,
    }
    if spec.job.priority_class_name:
        pod_spec["priorityClassName"] = spec.job.priority_class_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": order.job_name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {
                ANNOTATION_NODE: order.node,
                ANNOTATION_REASON: order.reason.value,
                ANNOTATION_BOOT_ID: order.boot_id,
            },
            "ownerReferences": [owner_reference(policy, policy_uid)],
        },
        "spec": {
            "backoffLimit": spec.job.backoff_limit,
            "activeDeadlineSeconds": spec.job.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec.job.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def build_node_result_patch(policy: str, result: NodeResult | None) -> dict[str, Any]:
    """Merge patch for the per-node result annotation (None removes it)."""
    value = None if result is None else result.to_annotation()
    return {"metadata": {"annotations": {ANNOTATION_RESULT_PREFIX + policy: value}}}


def build_restart_patch(moment: datetime, wave: str) -> dict[str, Any]:
    """What `kubectl rollout restart` does, plus the wave id that makes it happen once."""
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": {RESTARTED_AT: format_time(moment), RESTART_WAVE: wave}}
            }
        }
    }
