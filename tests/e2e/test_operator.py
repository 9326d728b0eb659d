"""The operator end to end: a real control plane, real kernels (network namespaces), the
operator as a real process. Each test states the user-visible behaviour it proves."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from devcluster.install import JOB_NAMESPACE
from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from devcluster.workloads import deployment as deployment_body
from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE
from nodesysctl.agent.persist import render_settled
from nodesysctl.labels import ANNOTATION_NODE, ANNOTATION_RESULT_PREFIX, LABEL_POLICY, RESTARTED_AT
from nodesysctl.planning import NodeFacts, NodeResult, NodeState
from nodesysctl.ports import PortRange
from tests.kube_json import read_json

from .conftest import OperatorProcess, Policies

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
WIDENED = {RANGE: "1024 65000"}
KERNEL_DEFAULT_RANGE = "32768\t60999"


def node_result(api: Any, node: str, policy: str) -> NodeResult | None:
    body = read_json(client.CoreV1Api(api).read_node, node)
    return NodeFacts.from_body(body).results.get(policy)


def wait_node_state(
    api: Any,
    node: str,
    policy: str,
    state: NodeState,
    *,
    timeout: float = 90,
    boot_id: str | None = None,
) -> NodeResult:
    def reached() -> NodeResult | None:
        result = node_result(api, node, policy)
        if result is None or result.status != state:
            return None
        if boot_id is not None and result.boot_id != boot_id:
            return None
        return result

    return wait_for(reached, timeout=timeout, what=f"node {node} {state} under {policy}")


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def wait_policy(
    policies: Policies,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 120,
) -> dict[str, Any]:
    def holds() -> dict[str, Any] | None:
        body = policies.get(name)
        return body if check(body) else None

    return wait_for(holds, timeout=timeout, what=f"policy {name}: {what}")


def ready(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return (
        condition(body, "Ready").get("status") == "True"
        and status.get("observedGeneration") == body["metadata"]["generation"]
    )


def policy_jobs(api: Any, policy: str) -> list[dict[str, Any]]:
    jobs = read_json(
        client.BatchV1Api(api).list_namespaced_job,
        JOB_NAMESPACE,
        label_selector=f"{LABEL_POLICY}={policy}",
    )
    return list(jobs["items"])


def events_for(api: Any, name: str, reason: str) -> list[dict[str, Any]]:
    events = read_json(
        client.CoreV1Api(api).list_event_for_all_namespaces,
        field_selector=f"involvedObject.name={name},reason={reason}",
    )
    return list(events["items"])


def deployment(
    api: Any,
    namespace: str,
    name: str,
    node: str,
    labels: dict[str, str] | None = None,
    *,
    host_network: bool = True,
) -> None:
    """Create a one-replica Deployment on `node` and wait until it is available (host network
    by default: the pods a node's port range reaches, the ones a restart wave is about)."""
    body = deployment_body(name, node, labels, host_network=host_network)
    apps: Any = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, body)

    def available() -> bool:
        dep = read_json(apps.read_namespaced_deployment, name, namespace)
        status = dep.get("status") or {}
        return bool(status.get("readyReplicas") == 1 and status.get("updatedReplicas") == 1)

    wait_for(available, timeout=60, what=f"deployment {namespace}/{name} available")


def rollouts(api: Any, namespace: str, name: str) -> tuple[int, str | None]:
    """(number of ReplicaSets, the pod template's restartedAt) of a Deployment."""
    apps: Any = client.AppsV1Api(api)
    sets = read_json(apps.list_namespaced_replica_set, namespace, label_selector=f"app={name}")
    dep = read_json(apps.read_namespaced_deployment, name, namespace)
    annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
    return len(sets["items"]), annotations.get(RESTARTED_AT)


def render_persisted(policy: str, reserved: tuple[PortRange, ...]) -> str:
    """The persistence file the agent keeps for the default range and these reserved ports on
    a node that already holds them (since issue 12 one composed file per node)."""
    return render_settled([policy], PortRange(32768, 60999), reserved)


def enforce_spec(selector: dict[str, str], **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeSelector": {"matchLabels": selector},
        "ports": {"protectedPorts": [10250]},
        "remediation": {"mode": "Enforce"},
        "rollout": {"maxConcurrent": 2, "maxFailedNodes": 1, "recheckInterval": "1h"},
    }
    spec.update(extra)
    return spec


# --- 1. the seed scenario --------------------------------------------------------------------


def test_widened_node_is_fixed_persisted_reported_and_its_workload_restarted_once(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    kubectl: Callable[..., Any],
    test_id: str,
) -> None:
    name = f"{test_id}-seed"
    drifted: SimulatedNode = node_factory(sysctls=WIDENED)
    healthy: SimulatedNode = node_factory(sysctls={RESERVED: "10250,30000-32767"})
    persisted_already = render_persisted(name, (PortRange(10250, 10250), PortRange(30000, 32767)))
    (healthy.host_path("/etc/sysctl.d") / COMPOSED_PERSIST_FILE).write_text(persisted_already)
    deployment(api_client, test_namespace, "selected", drifted.name, {"restart": "yes"})
    deployment(api_client, test_namespace, "unselected", drifted.name)
    deployment(api_client, test_namespace, "on-healthy", healthy.name, {"restart": "yes"})

    policies.create(
        name,
        enforce_spec(
            node_factory.selector,
            restart={
                "selector": {"matchLabels": {"restart": "yes"}},
                "namespaces": [test_namespace],
            },
        ),
    )
    body = wait_policy(
        policies,
        name,
        lambda b: ready(b) and "lastRestart" in b["status"],
        "Ready with a completed restart wave",
    )

    # The kernel of the drifted node really changed; the NodePort range is reserved.
    assert drifted.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    assert "30000-32767" in drifted.get_sysctl(RESERVED)
    assert "10250" in drifted.get_sysctl(RESERVED)
    persisted = drifted.sysctl_conf_files()[COMPOSED_PERSIST_FILE]
    assert "net.ipv4.ip_local_port_range = 32768 60999" in persisted
    # The healthy node was only checked: nothing to change there.
    assert healthy.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    assert healthy.sysctl_conf_files()[COMPOSED_PERSIST_FILE] == persisted_already

    # Status and per-node results tell the story.
    status = body["status"]
    assert (status["nodes"], status["compliant"], status["drifted"], status["failed"]) == (
        2,
        2,
        0,
        0,
    )
    fixed = node_result(api_client, drifted.name, name)
    assert fixed is not None
    assert fixed.status == NodeState.REMEDIATED
    assert fixed.restart_pending is False
    untouched = node_result(api_client, healthy.name, name)
    assert untouched is not None
    assert untouched.status == NodeState.COMPLIANT
    assert events_for(api_client, drifted.name, "Remediated")

    # Exactly one new rollout of the selected Deployment on the remediated node; none elsewhere.
    assert status["lastRestart"]["workloads"] == [f"Deployment/{test_namespace}/selected"]
    sets, restarted_at = rollouts(api_client, test_namespace, "selected")
    assert sets == 2
    assert restarted_at is not None
    assert rollouts(api_client, test_namespace, "unselected") == (1, None)
    assert rollouts(api_client, test_namespace, "on-healthy") == (1, None)

    # `kubectl get nsp` shows it with the printer columns.
    out = kubectl("get", "nsp", name).stdout
    header, row = out.splitlines()[:2]
    assert header.split()[:7] == [
        "NAME",
        "MODE",
        "NODES",
        "COMPLIANT",
        "DRIFTED",
        "FAILED",
        "READY",
    ]
    assert row.split()[:7] == [name, "Enforce", "2", "2", "0", "0", "True"]


# --- 2. Audit mode ---------------------------------------------------------------------------


def test_audit_mode_reports_drift_and_changes_nothing(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    reserved_before = node.get_sysctl(RESERVED)
    name = f"{test_id}-audit"
    policies.create(name, enforce_spec(node_factory.selector, remediation={"mode": "Audit"}))
    body = wait_policy(
        policies, name, lambda b: (b.get("status") or {}).get("drifted") == 1, "one drifted node"
    )
    result = node_result(api_client, node.name, name)
    assert result is not None
    assert result.status == NodeState.DRIFTED
    assert "1024" in result.message
    assert condition(body, "Ready")["status"] == "False"
    assert node.get_sysctl(RANGE) == "1024\t65000"
    assert node.get_sysctl(RESERVED) == reserved_before
    assert node.sysctl_conf_files() == {}
    assert events_for(api_client, node.name, "DriftDetected")


# --- 3. nodes that join or start matching later ----------------------------------------------


def test_node_added_later_or_relabelled_is_fixed_without_touching_the_policy(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    first: SimulatedNode = node_factory()
    name = f"{test_id}-join"
    policies.create(name, enforce_spec({"pool": f"{test_id}-pool"}))
    first.set_labels({"pool": f"{test_id}-pool"})
    wait_policy(policies, name, lambda b: ready(b) and b["status"]["nodes"] == 1, "Ready, 1 node")
    generation = policies.get(name)["metadata"]["generation"]

    joined: SimulatedNode = node_factory({"pool": f"{test_id}-pool"}, sysctls=WIDENED)
    wait_node_state(api_client, joined.name, name, NodeState.REMEDIATED)
    assert joined.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE

    relabelled: SimulatedNode = node_factory(sysctls=WIDENED)
    assert node_result(api_client, relabelled.name, name) is None  # not selected yet
    relabelled.set_labels({"pool": f"{test_id}-pool"})
    wait_node_state(api_client, relabelled.name, name, NodeState.REMEDIATED)
    assert relabelled.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE

    body = wait_policy(
        policies, name, lambda b: ready(b) and b["status"]["nodes"] == 3, "Ready, 3 nodes"
    )
    assert body["metadata"]["generation"] == generation


# --- 4. reboots ------------------------------------------------------------------------------


def test_reboot_triggers_a_recheck_and_the_fix_survives_via_sysctl_d(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    name = f"{test_id}-reboot"
    policies.create(name, enforce_spec(node_factory.selector))
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)

    # A reboot that loses the fix (no sysctl.d applied): drift again, fixed again.
    boot = node.reboot()
    assert node.get_sysctl(RANGE) == "1024\t65000"
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED, boot_id=boot)
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE

    # A reboot that applies /etc/sysctl.d as systemd-sysctl does (by file name, last wins): the
    # persisted file keeps the node compliant, and the recheck finds nothing to do — even with
    # the distribution's 99-sysctl.conf (-> /etc/sysctl.conf) still widening the range.
    (node.host_path("/etc/sysctl.d") / "99-sysctl.conf").write_text(f"{RANGE} = 1024 65000\n")
    boot = node.reboot_applying_sysctl_d()
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    wait_node_state(api_client, node.name, name, NodeState.COMPLIANT, boot_id=boot)


# --- 5. concurrency and the failure budget ----------------------------------------------------


def test_concurrency_limit_and_failure_budget_halt_the_rollout(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    broken: SimulatedNode = node_factory(name=f"{test_id}-a-broken", netns=False)
    (broken.proc_sys / "net/ipv4/ip_local_port_range").write_text("garbage\n")
    others: list[SimulatedNode] = [node_factory(sysctls=WIDENED, netns=False) for _ in range(3)]
    name = f"{test_id}-budget"
    policies.create(
        name, enforce_spec(node_factory.selector, rollout={"maxConcurrent": 1, "maxFailedNodes": 1})
    )
    body = wait_policy(
        policies, name, lambda b: condition(b, "Degraded").get("status") == "True", "Degraded"
    )
    assert "halted" in condition(body, "Degraded")["message"]
    assert body["status"]["failed"] == 1
    failed = node_result(api_client, broken.name, name)
    assert failed is not None
    assert failed.status == NodeState.FAILED
    assert "garbage" in failed.message
    assert events_for(api_client, name, "RolloutHalted")

    # Halted means halted: the broken node sorts first, so nothing else was ever started.
    checked = {
        job["metadata"]["annotations"][ANNOTATION_NODE] for job in policy_jobs(api_client, name)
    }
    assert checked == {broken.name}
    assert all(n.get_sysctl(RANGE) == "1024\t65000" for n in others)

    # Fix the node and change the policy: a new generation retries, one check at a time.
    broken.set_sysctl(RANGE, "32768 60999")
    policies.patch_spec(
        name, {"rollout": {"maxFailedNodes": 2}, "ports": {"protectedPorts": [10250, 10256]}}
    )
    wait_policy(policies, name, ready, "Ready after the retry")
    jobs = sorted(policy_jobs(api_client, name), key=lambda j: j["metadata"]["creationTimestamp"])
    spans = [
        (j["metadata"]["creationTimestamp"], j["status"].get("completionTime") or "") for j in jobs
    ]
    for (_, earlier_done), (later_created, _) in itertools.pairwise(spans):
        assert later_created >= earlier_done, f"checks overlapped with maxConcurrent=1: {spans}"


# --- 6. crash in the middle of a rollout -----------------------------------------------------


def test_operator_killed_mid_rollout_makes_no_duplicate_jobs_or_restarts(
    start_operator: Callable[..., OperatorProcess],
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes: list[SimulatedNode] = [node_factory(sysctls=WIDENED) for _ in range(3)]
    for index, node in enumerate(nodes):
        deployment(api_client, test_namespace, f"app{index}", node.name, {"restart": "yes"})
    first = start_operator()
    name = f"{test_id}-crash"
    policies.create(
        name,
        enforce_spec(
            node_factory.selector,
            rollout={"maxConcurrent": 1},
            restart={
                "selector": {"matchLabels": {"restart": "yes"}},
                "namespaces": [test_namespace],
            },
        ),
    )
    wait_for(lambda: policy_jobs(api_client, name), timeout=60, what="the first check Job")
    first.kill()

    start_operator()
    wait_policy(
        policies,
        name,
        lambda b: ready(b) and "lastRestart" in b["status"],
        "Ready with a completed restart wave",
        timeout=180,
    )
    per_node = Counter(
        j["metadata"]["annotations"][ANNOTATION_NODE] for j in policy_jobs(api_client, name)
    )
    assert per_node == Counter({n.name: 1 for n in nodes}), "a node was checked twice"
    for index in range(3):
        sets, restarted_at = rollouts(api_client, test_namespace, f"app{index}")
        assert (sets, restarted_at is not None) == (2, True), f"app{index} restarted {sets - 1}x"


# --- 7. deletion -----------------------------------------------------------------------------


def test_deleting_a_policy_leaves_no_jobs_annotations_or_finalizers(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    name = f"{test_id}-delete"
    policies.create(name, enforce_spec(node_factory.selector))
    wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    assert policy_jobs(api_client, name)

    policies.delete(name)
    wait_for(lambda: not policy_jobs(api_client, name), timeout=60, what="the policy's Jobs gone")
    body = read_json(client.CoreV1Api(api_client).read_node, node.name)
    meta = body["metadata"]
    assert not meta.get("finalizers")
    ours = [
        key
        for key in meta.get("annotations") or {}
        if key.startswith((ANNOTATION_RESULT_PREFIX, "kopf.zalando.org/"))
        # Kopf's own bookkeeping would carry our prefix; the simulator's marks are not ours.
        or (key.startswith("nodesysctl.io/") and not key.startswith("nodesysctl.io/simulated"))
    ]
    assert ours == []


# --- conflicts between policies ---------------------------------------------------------------


def test_conflicting_policies_are_reported_on_both_and_the_older_one_wins(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    older, younger = f"{test_id}-older", f"{test_id}-younger"
    policies.create(older, enforce_spec(node_factory.selector))
    wait_node_state(api_client, node.name, older, NodeState.REMEDIATED)
    # Changed on purpose with issue 12: the younger policy allowed 40000-60999, which now
    # composes with the older one (the node narrows into the intersection, tests/e2e/
    # test_compose.py); 20000-29999 has no port in common with 32768-60999 and conflicts.
    policies.create(
        younger,
        enforce_spec(node_factory.selector, ports={"ephemeralRange": {"min": 20000, "max": 29999}}),
    )

    for name in (older, younger):
        body = wait_policy(
            policies, name, lambda b: condition(b, "Conflict").get("status") == "True", "Conflict"
        )
        assert f"{older} takes precedence over {younger}" in condition(body, "Conflict")["message"]
    assert events_for(api_client, younger, "PolicyConflict")
    # The younger policy skips the contested node: no Job of its own, the older range stays.
    assert policy_jobs(api_client, younger) == []
    assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
    assert policies.get(younger)["status"]["nodes"] == 0


# --- boot order -------------------------------------------------------------------------------


def test_a_file_that_would_undo_the_fix_at_boot_is_named_and_one_read_before_ours_is_not(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    name = f"{test_id}-boot"
    widening = f"{RANGE} = 1024 65000\n"
    overridden: SimulatedNode = node_factory(sysctls=WIDENED)
    fine: SimulatedNode = node_factory(sysctls=WIDENED)
    tuning = overridden.host_path("/etc/sysctl.d") / "zzz-tuning.conf"  # sorts after ours
    tuning.write_text(widening)
    (fine.host_path("/etc/sysctl.d") / "50-tuning.conf").write_text(widening)  # before ours
    policies.create(name, enforce_spec(node_factory.selector))

    # Both nodes are fixed live and persisted; only the one whose file wins at boot is Drifted,
    # and its result names that file.
    drifted = wait_node_state(api_client, overridden.name, name, NodeState.DRIFTED)
    assert drifted.message.startswith(
        "PersistOverridden: at boot /etc/sysctl.d/zzz-tuning.conf sets "
        f"{RANGE} = 1024 65000 after our file"
    )
    fixed = wait_node_state(api_client, fine.name, name, NodeState.REMEDIATED)
    assert "tuning" not in fixed.message
    for node in (overridden, fine):
        assert node.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
        assert COMPOSED_PERSIST_FILE in node.sysctl_conf_files()  # one file per node (issue 12)
    assert tuning.read_text() == widening  # never someone else's file
    events = events_for(api_client, overridden.name, "PersistOverridden")
    assert events
    assert "/etc/sysctl.d/zzz-tuning.conf" in events[0]["message"]
    assert events_for(api_client, fine.name, "PersistOverridden") == []
    body = wait_policy(policies, name, lambda b: b["status"].get("drifted") == 1, "1 drifted")
    assert condition(body, "Ready").get("status") != "True"

    # The report is right: a boot that applies /etc/sysctl.d as systemd-sysctl does undoes the
    # fix on that node only.
    overridden.reboot_applying_sysctl_d()
    fine.reboot_applying_sysctl_d()
    assert overridden.get_sysctl(RANGE) == "1024\t65000"
    assert fine.get_sysctl(RANGE) == KERNEL_DEFAULT_RANGE
