"""Restart waves on plain data: which nodes wait, and what a wave does with each workload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nodesysctl.api import NodeSysctlPolicySpec, parse_spec
from nodesysctl.labels import LABEL_RESTART_OPT_IN, RESTART_WAVE
from nodesysctl.planning import NodeFacts, NodeResult, NodeState, selector_query, spec_hash
from nodesysctl.restarts import (
    RestartAction,
    RestartPlan,
    WorkloadStep,
    has_pod_on,
    plan_restart_wave,
    restart_wave,
    restarts_done,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = "nodeport-safe"
WAVE = "wave-1"


def make_spec() -> NodeSysctlPolicySpec:
    return parse_spec({"rollout": {"maxConcurrent": 2, "maxFailedNodes": 2}})


def node(name: str, *, result: NodeResult) -> NodeFacts:
    return NodeFacts(name, {}, "boot-1", {POLICY: result})


def result(spec: NodeSysctlPolicySpec, status: NodeState, *, restart: bool = False) -> NodeResult:
    checked = NOW - timedelta(minutes=5)
    return NodeResult(status, spec_hash(spec), "boot-1", checked, "nsc-job", "msg", restart)


def test_restart_wave_is_stable_and_only_for_pending_nodes() -> None:
    spec = make_spec()
    nodes = [
        node("b", result=result(spec, NodeState.REMEDIATED, restart=True)),
        node("a", result=result(spec, NodeState.REMEDIATED, restart=True)),
        node("c", result=result(spec, NodeState.COMPLIANT)),
    ]
    wave, pending = restart_wave(nodes, POLICY)
    assert pending == ("a", "b")
    assert wave == restart_wave(list(reversed(nodes)), POLICY)[0]
    assert restart_wave(nodes[2:], POLICY) == ("", ())


def test_a_new_check_of_a_node_is_a_new_wave() -> None:
    spec = make_spec()
    first = node("a", result=result(spec, NodeState.REMEDIATED, restart=True))
    current = spec_hash(spec)
    recheck = NodeResult(NodeState.REMEDIATED, current, "boot-1", NOW, "nsc-job-2", "", True)
    assert restart_wave([first], POLICY)[0] != restart_wave([node("a", result=recheck)], POLICY)[0]


def workload(
    name: str,
    app: str,
    *,
    kind: str = "Deployment",
    namespace: str = "apps",
    paused: bool = False,
    wave: str = "",
) -> dict[str, Any]:
    annotations = {RESTART_WAVE: wave} if wave else {}
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "paused": paused,
            "template": {"metadata": {"annotations": annotations}},
        },
    }


def pod(app: str, namespace: str = "apps") -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "labels": {"app": app}}}


def plan(workloads: dict[str, list[dict[str, Any]]], pods: list[dict[str, Any]]) -> RestartPlan:
    return plan_restart_wave(wave=WAVE, nodes=["n1", "n2"], workloads=workloads, pods=pods)


def idents(steps: tuple[WorkloadStep, ...]) -> list[str]:
    return [step.ident for step in steps]


def test_only_workloads_with_a_pod_on_the_waves_nodes_are_in_the_plan() -> None:
    restart = plan(
        {"Deployment": [workload("web", "web"), workload("elsewhere", "elsewhere")]},
        [pod("web")],
    )
    assert idents(restart.steps) == ["Deployment/apps/web"]
    assert restart.to_restart == (
        WorkloadStep(RestartAction.RESTART, "Deployment", "apps", "web", "uid-web"),
    )


def test_a_pod_in_another_namespace_does_not_count() -> None:
    restart = plan({"Deployment": [workload("web", "web")]}, [pod("web", namespace="other")])
    assert restart.steps == ()


def test_stamped_with_the_wave_id_is_already_done() -> None:
    restart = plan(
        {"Deployment": [workload("web", "web", wave=WAVE), workload("old", "old", wave="older")]},
        [pod("web"), pod("old")],
    )
    assert idents(restart.already_done) == ["Deployment/apps/web"]
    assert idents(restart.to_restart) == ["Deployment/apps/old"]


def test_a_paused_deployment_is_skipped_unless_already_stamped() -> None:
    restart = plan(
        {
            "Deployment": [
                workload("frozen", "frozen", paused=True),
                workload("stamped", "stamped", paused=True, wave=WAVE),
            ],
            # Only Deployments have `spec.paused`; a DaemonSet carrying one is restarted.
            "DaemonSet": [workload("agent", "agent", kind="DaemonSet", paused=True)],
        },
        [pod("frozen"), pod("stamped"), pod("agent")],
    )
    assert idents(restart.skipped_paused) == ["Deployment/apps/frozen"]
    assert idents(restart.already_done) == ["Deployment/apps/stamped"]
    assert idents(restart.to_restart) == ["DaemonSet/apps/agent"]


def test_steps_keep_the_kind_order_then_the_listed_order() -> None:
    restart = plan(
        {
            "StatefulSet": [workload("db", "db", kind="StatefulSet")],
            "Deployment": [
                workload("b", "b"),
                workload("a", "a", paused=True),
                workload("c", "c", wave=WAVE),
            ],
        },
        [pod("a"), pod("b"), pod("c"), pod("db")],
    )
    assert [(step.action, step.ident) for step in restart.steps] == [
        (RestartAction.RESTART, "StatefulSet/apps/db"),
        (RestartAction.RESTART, "Deployment/apps/b"),
        (RestartAction.SKIP_PAUSED, "Deployment/apps/a"),
        (RestartAction.ALREADY_DONE, "Deployment/apps/c"),
    ]


def test_last_restart_counts_restarted_and_already_done_not_skipped() -> None:
    listed = [workload(f"w{i:02}", "web") for i in range(11)]
    listed.append(workload("frozen", "web", paused=True))
    listed.append(workload("stamped", "web", wave=WAVE))
    status = plan({"Deployment": listed}, [pod("web")]).last_restart(NOW)
    assert status == {
        "wave": WAVE,
        "at": "2026-11-25T12:00:00Z",
        "nodes": 2,
        "workloads": [f"Deployment/apps/w{i:02}" for i in range(10)],
        "count": 12,
    }


def test_has_pod_on_matches_the_selector_in_the_workloads_namespace() -> None:
    web = workload("web", "web")
    assert has_pod_on(web, [pod("db"), pod("web")])
    assert not has_pod_on(web, [pod("db")])
    assert not has_pod_on(web, [pod("web", namespace="other")])
    assert not has_pod_on(web, [])
    # An empty selector selects every pod of the namespace (metav1 semantics).
    anything = {**web, "spec": {**web["spec"], "selector": None}}
    assert has_pod_on(anything, [{"metadata": {"namespace": "apps"}}])


def test_an_explicit_empty_selector_makes_every_workload_everywhere_a_candidate() -> None:
    """What `restart: {selector: {}}` without namespaces gives a policy writer: no label
    selector and no namespace on the list of candidates (every Deployment in the cluster,
    kube-system's included; all three kinds if `kinds` says so), and each with a pod on a
    remediated node is restarted. Without `restart`, nothing is; by default, only opted-in
    Deployments are candidates."""
    everything = parse_spec({"restart": {"selector": {}, "kinds": ["Deployment", "DaemonSet"]}})
    assert everything.restart is not None
    selector = everything.restart.selector
    assert selector_query(selector.match_labels, selector.match_expressions) == ""
    assert everything.restart.namespaces == []
    restart = plan(
        {
            "Deployment": [workload("coredns", "kube-dns", namespace="kube-system")],
            "DaemonSet": [workload("proxy", "proxy", kind="DaemonSet", namespace="kube-system")],
        },
        [pod("kube-dns", namespace="kube-system"), pod("proxy", namespace="kube-system")],
    )
    assert idents(restart.to_restart) == [
        "Deployment/kube-system/coredns",
        "DaemonSet/kube-system/proxy",
    ]
    assert parse_spec({}).restart is None
    opted_in = parse_spec({"restart": {}}).restart
    assert opted_in is not None
    assert selector_query(opted_in.selector.match_labels, ()) == f"{LABEL_RESTART_OPT_IN}=true"


def test_restarts_done_clears_only_the_waiting_results() -> None:
    spec = make_spec()
    waiting = result(spec, NodeState.REMEDIATED, restart=True)
    nodes = [
        node("a", result=waiting),
        node("b", result=result(spec, NodeState.REMEDIATED)),
        NodeFacts("c", {}, "boot-1", {}),
    ]
    done = restarts_done(nodes, POLICY)
    assert list(done) == ["a"]
    assert done["a"].restart_pending is False
    assert done["a"] == NodeResult.from_annotation(done["a"].to_annotation())  # as stored
    assert restarts_done(nodes, "another-policy") == {}
