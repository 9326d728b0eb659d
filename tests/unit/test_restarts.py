"""Restart waves on plain data: which nodes wait, which pods the fault touched, whose they are,
and what a wave does with each workload."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from nodesysctl.api import NodeSysctlPolicySpec, RestartPods, RestartSpec, parse_spec
from nodesysctl.labels import LABEL_RESTART_OPT_IN, RESTART_WAVE, RESTARTED_AT
from nodesysctl.planning import NodeFacts, NodeResult, NodeState, format_time, spec_hash
from nodesysctl.restarts import (
    MAX_EVICTION_ATTEMPTS,
    RestartAction,
    RestartPlan,
    WaveProgress,
    WorkloadRef,
    affected_pods,
    last_restart,
    needs_replica_sets,
    plan_restart_wave,
    remediated_at,
    resolve_owners,
    restart_wave,
    restarts_done,
    wave_status,
    wave_summary,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIXED = NOW - timedelta(minutes=5)  # when the nodes were remediated
BEFORE = format_time(FIXED - timedelta(hours=1))
AFTER = format_time(FIXED + timedelta(seconds=30))
POLICY = "nodeport-safe"
WAVE = "wave-1"
EVERYTHING = RestartSpec.model_validate(
    {"kinds": ["Deployment", "StatefulSet", "DaemonSet"], "selector": {}}
)


def make_spec() -> NodeSysctlPolicySpec:
    return parse_spec({"rollout": {"maxConcurrent": 2, "maxFailedNodes": 2}})


def node(name: str, *, result: NodeResult) -> NodeFacts:
    return NodeFacts(name, {}, "boot-1", {POLICY: result})


def result(spec: NodeSysctlPolicySpec, status: NodeState, *, restart: bool = False) -> NodeResult:
    return NodeResult(status, spec_hash(spec), "boot-1", FIXED, "nsc-job", "msg", restart)


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
    assert remediated_at(nodes, POLICY) == {"a": FIXED, "b": FIXED}


def test_a_new_check_of_a_node_is_a_new_wave() -> None:
    spec = make_spec()
    first = node("a", result=result(spec, NodeState.REMEDIATED, restart=True))
    current = spec_hash(spec)
    recheck = NodeResult(NodeState.REMEDIATED, current, "boot-1", NOW, "nsc-job-2", "", True)
    assert restart_wave([first], POLICY)[0] != restart_wave([node("a", result=recheck)], POLICY)[0]


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


# --- which pods the fault touched ----------------------------------------------------------


def pod(
    name: str,
    *,
    owner: tuple[str, str] | None = ("ReplicaSet", "web-rs"),
    node: str = "n1",
    host: bool = True,
    started: str = BEFORE,
    namespace: str = "apps",
    **extra: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if owner is not None:
        kind, owner_name = owner
        api_version = "v1" if kind == "Node" else "apps/v1"
        meta["ownerReferences"] = [
            {"apiVersion": api_version, "kind": kind, "name": owner_name,
             "uid": f"uid-{owner_name}", "controller": True}
        ]  # fmt: skip
    meta.update(extra.pop("meta", {}))
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host},
        "status": {"phase": "Running", "startTime": started, **extra},
    }


def replica_set(name: str, deployment: str | None, namespace: str = "apps") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if deployment is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
             "uid": f"uid-{deployment}", "controller": True}
        ]  # fmt: skip
    return {"metadata": meta}


def names(pods: list[Any]) -> list[str]:
    return [p.name for p in pods]


def test_by_default_only_host_network_pods_started_before_the_fix_are_affected() -> None:
    listed = [
        pod("host-old"),
        pod("pod-network", host=False),
        pod("replacement", started=AFTER),
        pod("elsewhere", node="n9"),
        pod("terminating", meta={"deletionTimestamp": AFTER}),
        pod("finished", phase="Succeeded"),
        pod("agent", namespace="nodesysctl-jobs"),
    ]
    remediated = {"n1": FIXED}
    found = affected_pods(listed, remediated, RestartPods.HOST_NETWORK, ["nodesysctl-jobs"])
    assert names(found) == ["host-old"]
    # `pods: All` widens it to every pod on the node, host network or not.
    widened = affected_pods(listed, remediated, RestartPods.ALL, ["nodesysctl-jobs"])
    assert names(widened) == ["host-old", "pod-network"]


def test_a_pod_without_a_start_time_counts_from_its_creation() -> None:
    created = pod("pending", started="")
    created["metadata"]["creationTimestamp"] = BEFORE
    del created["status"]["startTime"]
    assert names(affected_pods([created], {"n1": FIXED}, RestartPods.HOST_NETWORK)) == ["pending"]


def test_workloads_are_resolved_by_ownership_not_by_labels() -> None:
    pods = affected_pods(
        [
            pod("web-1", owner=("ReplicaSet", "web-rs")),
            pod("web-2", owner=("ReplicaSet", "web-rs"), node="n2"),
            pod("db-0", owner=("StatefulSet", "db")),
            pod("agent-x", owner=("DaemonSet", "agent")),
            pod("bare", owner=None),
            pod("static", owner=("Node", "n1")),
            pod("job-pod", owner=("Job", "nightly")),
            pod("orphan-rs", owner=("ReplicaSet", "lonely-rs")),
            pod("lost-rs", owner=("ReplicaSet", "gone-rs")),
        ],
        {"n1": FIXED, "n2": FIXED},
        RestartPods.HOST_NETWORK,
    )
    assert needs_replica_sets(pods)
    resolution = resolve_owners(
        pods, [replica_set("web-rs", "web"), replica_set("lonely-rs", None)], EVERYTHING
    )
    assert {ref.ident: names(list(found)) for ref, found in resolution.workloads.items()} == {
        "Deployment/apps/web": ["web-1", "web-2"],
        "StatefulSet/apps/db": ["db-0"],
        "DaemonSet/apps/agent": ["agent-x"],
    }
    reasons = {step.ident: step.reason for step in resolution.left}
    assert all(step.action == RestartAction.NOT_RESTARTABLE for step in resolution.left)
    assert reasons["Pod/apps/bare"].startswith("a bare pod (no controller): never deleted")
    assert reasons["Pod/apps/static"].startswith("a static pod of node n1 (a mirror pod)")
    assert reasons["Pod/apps/job-pod"].startswith("owned by Job nightly")
    assert reasons["Pod/apps/orphan-rs"].startswith("its ReplicaSet lonely-rs has no Deployment")
    assert reasons["Pod/apps/lost-rs"].startswith("its ReplicaSet gone-rs was not found")


def test_kinds_namespaces_and_system_namespaces_filter_before_anything_is_read() -> None:
    pods = affected_pods(
        [
            pod("agent-x", owner=("DaemonSet", "agent")),
            pod("proxy", owner=("DaemonSet", "kube-proxy"), namespace="kube-system"),
            pod("own", owner=("DaemonSet", "op"), namespace="nodesysctl-system"),
            pod("db-0", owner=("StatefulSet", "db"), namespace="data"),
        ],
        {"n1": FIXED},
        RestartPods.HOST_NETWORK,
    )
    deployments_only = RestartSpec.model_validate({"selector": {}})
    resolution = resolve_owners(pods, [], deployments_only, ["nodesysctl-system"])
    assert resolution.workloads == {}
    assert {s.ident: s.reason for s in resolution.left}["DaemonSet/apps/agent"] == (
        "kind DaemonSet is not in spec.restart.kinds"
    )
    everywhere = resolve_owners(pods, [], EVERYTHING, ["nodesysctl-system"])
    assert [ref.ident for ref in everywhere.workloads] == [
        "DaemonSet/apps/agent",
        "StatefulSet/data/db",
    ]
    left = {s.ident: s for s in everywhere.left}
    assert left["DaemonSet/kube-system/kube-proxy"].action == RestartAction.NOT_SELECTED
    assert left["DaemonSet/kube-system/kube-proxy"].reason == (
        "kube-system is a system namespace: restarted only when spec.restart.namespaces names it"
    )
    assert "DaemonSet/nodesysctl-system/op" in left
    # Named, a system namespace is restarted; the others are then out of scope.
    named = RestartSpec.model_validate(
        {"kinds": ["DaemonSet", "StatefulSet"], "selector": {}, "namespaces": ["kube-system"]}
    )
    only = resolve_owners(pods, [], named, ["nodesysctl-system"])
    assert [ref.ident for ref in only.workloads] == ["DaemonSet/kube-system/kube-proxy"]
    assert {s.ident: s.reason for s in only.left}["StatefulSet/data/db"] == (
        "namespace data is not in spec.restart.namespaces"
    )


# --- the plan --------------------------------------------------------------------------------


def workload(
    kind: str,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    paused: bool = False,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": "apps", "uid": f"uid-{name}",
                     "labels": labels or {}},
        "spec": {"paused": paused, "template": {"metadata": {"annotations": annotations or {}}}},
    }  # fmt: skip


def plan_for(
    listed: list[dict[str, Any]],
    bodies: dict[str, dict[str, Any] | None],
    restart: RestartSpec = EVERYTHING,
    remediated: dict[str, datetime] | None = None,
) -> RestartPlan:
    nodes = remediated or {"n1": FIXED, "n2": FIXED}
    pods = affected_pods(listed, nodes, restart.pods)
    sets = [replica_set(f"{name}-rs", name) for name in bodies]
    resolution = resolve_owners(pods, sets, restart)
    by_ref = {ref: bodies.get(ref.name) for ref in resolution.workloads}
    return plan_restart_wave(
        wave=WAVE,
        nodes=sorted(nodes),
        remediated=nodes,
        resolution=resolution,
        bodies=by_ref,
        restart=restart,
    )


def actions(plan: RestartPlan) -> list[tuple[str, str, str]]:
    return [(step.action.value, step.ident, step.pod) for step in plan.steps]


def test_deployments_and_statefulsets_restart_once_a_daemonset_only_its_pods_on_the_nodes() -> None:
    plan = plan_for(
        [
            pod("web-1", owner=("ReplicaSet", "web-rs")),
            pod("web-2", owner=("ReplicaSet", "web-rs"), node="n2"),
            pod("db-0", owner=("StatefulSet", "db")),
            pod("agent-b", owner=("DaemonSet", "agent"), node="n2"),
            pod("agent-a", owner=("DaemonSet", "agent")),
            pod("agent-c", owner=("DaemonSet", "agent"), node="n3"),  # not remediated
        ],
        {
            "web": workload("Deployment", "web"),
            "db": workload("StatefulSet", "db"),
            "agent": workload("DaemonSet", "agent"),
        },
    )
    assert actions(plan) == [
        ("Restart", "Deployment/apps/web", ""),
        ("Restart", "StatefulSet/apps/db", ""),
        ("Evict", "DaemonSet/apps/agent", "agent-a"),
        ("Evict", "DaemonSet/apps/agent", "agent-b"),
    ]
    [first, _second] = plan.to_evict
    assert (first.node, first.pod_uid) == ("n1", "uid-agent-a")
    assert first.reason == "evict pod agent-a on node n1 (only that node's pod)"
    assert plan.to_restart[0].reason == (
        "rollout restart: hostNetwork pod on node n1, n2 started before the fix"
    )


def test_the_selector_is_on_the_workloads_labels_and_a_gone_workload_is_left_out() -> None:
    restart = RestartSpec.model_validate(
        {"kinds": ["Deployment"], "selector": {"matchLabels": {"restart": "yes"}}}
    )
    plan = plan_for(
        [
            pod("web-1", owner=("ReplicaSet", "web-rs")),
            pod("other-1", owner=("ReplicaSet", "other-rs")),
            pod("gone-1", owner=("ReplicaSet", "gone-rs")),
        ],
        {
            "web": workload("Deployment", "web", labels={"restart": "yes"}),
            "other": workload("Deployment", "other"),
            "gone": None,
        },
        restart,
    )
    assert actions(plan) == [
        ("Restart", "Deployment/apps/web", ""),
        ("NotRestartable", "Deployment/apps/gone", ""),
        ("NotSelected", "Deployment/apps/other", ""),
    ]


def test_stamped_with_the_wave_or_restarted_since_the_fix_is_done_paused_is_skipped() -> None:
    plan = plan_for(
        [
            pod(f"{name}-1", owner=("ReplicaSet", f"{name}-rs"))
            for name in ("stamped", "since", "long-ago", "frozen", "frozen-stamped")
        ],
        {
            "stamped": workload("Deployment", "stamped", annotations={RESTART_WAVE: WAVE}),
            "since": workload("Deployment", "since", annotations={RESTARTED_AT: AFTER}),
            "long-ago": workload("Deployment", "long-ago", annotations={RESTARTED_AT: BEFORE}),
            "frozen": workload("Deployment", "frozen", paused=True),
            "frozen-stamped": workload(
                "Deployment", "frozen-stamped", paused=True, annotations={RESTART_WAVE: WAVE}
            ),
        },
    )
    assert {step.name: step.action for step in plan.steps} == {
        "stamped": RestartAction.ALREADY_DONE,
        "since": RestartAction.ALREADY_DONE,
        "long-ago": RestartAction.RESTART,
        "frozen": RestartAction.SKIP_PAUSED,
        "frozen-stamped": RestartAction.ALREADY_DONE,
    }


def test_a_restarted_operator_finds_nothing_left_once_the_replacements_run() -> None:
    """After the wave: the Deployment's new pod and the DaemonSet's replacement started after
    the fix, so the same wave planned again has nothing to do."""
    plan = plan_for(
        [
            pod("web-2", owner=("ReplicaSet", "web-rs"), started=AFTER),
            pod("agent-new", owner=("DaemonSet", "agent"), started=AFTER),
        ],
        {"web": workload("Deployment", "web"), "agent": workload("DaemonSet", "agent")},
    )
    assert plan.steps == ()


# --- progress and status ---------------------------------------------------------------------


def two_evictions() -> RestartPlan:
    return plan_for(
        [pod("a-1", owner=("DaemonSet", "a")), pod("web-1", owner=("ReplicaSet", "web-rs"))],
        {"a": workload("DaemonSet", "a"), "web": workload("Deployment", "web")},
    )


def test_a_refused_eviction_is_retried_with_a_bound_then_blocked() -> None:
    plan = two_evictions()
    [restart, evict] = plan.writes
    progress = WaveProgress().with_done(restart)
    assert progress.fresh(plan) == [evict]
    moment = NOW
    for attempt in range(1, MAX_EVICTION_ATTEMPTS):
        progress = progress.with_refusal(evict, "would violate the disruption budget", moment)
        assert progress.fresh(plan) == []  # tried: no second token
        assert progress.retries_due(plan, moment) == []
        assert progress.next_retry_in(plan, moment) == 10.0
        moment += timedelta(seconds=10)
        assert progress.retries_due(plan, moment) == [evict], attempt
        assert not progress.complete(plan)
    progress = progress.with_refusal(evict, "would violate the disruption budget", moment)
    assert progress.complete(plan)
    blocked = progress.outcome(evict)
    assert blocked.action == RestartAction.EVICTION_BLOCKED
    assert blocked.reason == (
        f"pod a-1 on node n1: eviction refused {MAX_EVICTION_ATTEMPTS} times "
        "(would violate the disruption budget)"
    )
    status = last_restart(plan, progress, NOW)
    assert status["workloads"] == ["Deployment/apps/web"]
    assert status["evicted"] == 0
    assert status["notRestarted"] == [
        {"workload": "DaemonSet/apps/a", "action": "EvictionBlocked", "reason": blocked.reason}
    ]


def test_wave_status_lists_the_open_steps_first_with_counts() -> None:
    plan = two_evictions()
    [restart, _evict] = plan.writes
    status = wave_status(plan, WaveProgress().with_done(restart), "OnRemediation")
    assert status["remaining"] == 1
    assert status["counts"] == {"Restart": 1, "Evict": 1}
    assert [s["workload"] for s in status["steps"]] == ["DaemonSet/apps/a", "Deployment/apps/web"]


def test_last_restart_lists_at_most_ten_and_counts_all() -> None:
    listed = [pod(f"w{i:02}-1", owner=("ReplicaSet", f"w{i:02}-rs")) for i in range(12)]
    bodies: dict[str, dict[str, Any] | None] = {
        f"w{i:02}": workload("Deployment", f"w{i:02}") for i in range(12)
    }
    plan = plan_for(listed, bodies)
    status = last_restart(plan, WaveProgress(), NOW, report=True)
    assert status["workloads"] == [f"Deployment/apps/w{i:02}" for i in range(10)]
    assert (status["count"], status["report"], status["nodes"]) == (12, True, 2)


def test_the_summary_says_why_pod_network_pods_were_left_alone() -> None:
    plan = two_evictions()
    text = wave_summary(plan, WaveProgress(), RestartPods.HOST_NETWORK, report=True)
    assert text.startswith(f"restart wave {WAVE} over 2 nodes: would restart 1 workloads")
    assert "a pod with its own network namespace never had the node's ip_local_port_range" in text
    assert "own network namespace" not in wave_summary(
        plan, WaveProgress(), RestartPods.ALL, report=False
    )


def test_resolve_owners_keeps_one_entry_per_workload() -> None:
    pods = affected_pods(
        [pod("a-1", owner=("DaemonSet", "a")), pod("a-2", owner=("DaemonSet", "a"), node="n2")],
        {"n1": FIXED, "n2": FIXED},
        RestartPods.HOST_NETWORK,
    )
    resolution = resolve_owners(pods, [], EVERYTHING)
    assert list(resolution.workloads) == [WorkloadRef("DaemonSet", "apps", "a", "uid-a")]


def test_an_explicit_empty_selector_makes_every_affected_workload_a_candidate_but_system_ones() -> (
    None
):
    """What `restart: {selector: {}}` without namespaces gives a policy writer: every workload
    (of the kinds `kinds` names) that owns an affected pod, except in the system namespaces
    (kube-system, ...), which only a policy that names them reaches. Without `restart`, nothing
    is; by default, only opted-in workloads are."""
    everything = parse_spec({"restart": {"selector": {}, "kinds": ["Deployment", "DaemonSet"]}})
    assert everything.restart is not None
    assert everything.restart.namespaces == []
    listed = [
        pod("coredns-1", owner=("ReplicaSet", "coredns-rs"), namespace="kube-system"),
        pod("proxy-n1", owner=("DaemonSet", "proxy"), namespace="kube-system"),
        pod("web-1", owner=("ReplicaSet", "web-rs")),
    ]
    plan = plan_for(
        listed,
        {"web": workload("Deployment", "web"), "coredns": workload("Deployment", "coredns")},
        everything.restart,
    )
    assert [(s.action.value, s.ident) for s in plan.steps] == [
        ("Restart", "Deployment/apps/web"),
        ("NotSelected", "DaemonSet/kube-system/proxy"),
        ("NotSelected", "Deployment/kube-system/coredns"),
    ]
    named = parse_spec(
        {"restart": {"selector": {}, "kinds": ["Deployment"], "namespaces": ["kube-system"]}}
    ).restart
    assert named is not None
    pods = affected_pods(listed, {"n1": FIXED}, named.pods)
    resolution = resolve_owners(pods, [replica_set("coredns-rs", "coredns")], named)
    assert [ref.ident for ref in resolution.workloads] == ["Deployment/kube-system/coredns"]
    assert parse_spec({}).restart is None
    opted_in = parse_spec({"restart": {}}).restart
    assert opted_in is not None
    assert opted_in.selector.match_labels == {LABEL_RESTART_OPT_IN: "true"}
