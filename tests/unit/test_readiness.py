"""Readiness taints: the pure decision (`nodesysctl.readiness`), the guarded write
(`nodesysctl.node_taints`) against a stand-in that applies JSON patches as the API server does,
and one pass of a policy with `spec.readiness` (handler level; tests/e2e/test_readiness.py is
the proof on a real control plane)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from nodesysctl.api import NodeSysctlPolicySpec, TaintEffect, parse_spec
from nodesysctl.availability import agent_tolerations, judge
from nodesysctl.compose import PolicyRanges, compose
from nodesysctl.kube import KubeError
from nodesysctl.labels import ANNOTATION_RESULT_PREFIX, READINESS_TAINT_PREFIX
from nodesysctl.node_taints import (
    TAINT_WRITE_ATTEMPTS,
    TaintConflictError,
    is_conflict,
    write_decision,
)
from nodesysctl.planning import NodeFacts, NodeResult, NodeState, node_spec_hash, spec_hash
from nodesysctl.readiness import (
    ReadinessAction,
    ReadinessDecision,
    decide,
    edit_taints,
    release,
)

from .test_reconcile import POLICY, RecordingKube, finished_job, reconciler, snapshot

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = READINESS_TAINT_PREFIX
OURS = {"key": KEY, "effect": "NoSchedule"}
# Another writer's taint, with the timeAdded the API server keeps for NoExecute taints.
THEIRS = {"key": "example.com/dedicated", "value": "db", "effect": "NoExecute",
          "timeAdded": "2026-12-01T11:00:00Z"}  # fmt: skip
LABELS = {"pool": "web"}


def policy(name: str, readiness: Mapping[str, Any] | None = None, **spec: Any) -> PolicyRanges:
    raw: dict[str, Any] = {"nodeSelector": {"matchLabels": LABELS}, **spec}
    if readiness is not None:
        raw["readiness"] = dict(readiness)
    return PolicyRanges(name, f"2026-11-0{len(name) % 9 + 1}T00:00:00Z", parse_spec(raw))


def result(
    owner: PolicyRanges,
    status: NodeState = NodeState.COMPLIANT,
    boot: str = "boot-2",
    others: Sequence[PolicyRanges] = (),
) -> NodeResult:
    """`owner`'s result for its current check hash on a node labelled LABELS."""
    composition = compose("n1", LABELS, [owner, *others])
    return NodeResult(
        status=status,
        spec_hash=node_spec_hash(owner.name, owner.spec, composition),
        boot_id=boot,
        checked_at=NOW,
        job="nsc-x",
        message="write failed: Read-only file system" if status is NodeState.FAILED else "",
    )


def node_body(
    taints: Sequence[Mapping[str, Any]] = (OURS,),
    results: Mapping[str, NodeResult] | None = None,
    *,
    boot: str = "boot-2",
    labels: Mapping[str, str] = LABELS,
    version: str = "7",
) -> dict[str, Any]:
    annotations = {
        ANNOTATION_RESULT_PREFIX + p: r.to_annotation() for p, r in (results or {}).items()
    }
    return {
        "metadata": {"name": "n1", "labels": dict(labels), "annotations": annotations,
                     "resourceVersion": version},
        "spec": {"taints": [dict(t) for t in taints]} if taints else {},
        "status": {"nodeInfo": {"bootID": boot},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def facts(body: Mapping[str, Any]) -> NodeFacts:
    return NodeFacts.from_body(body)


def decision_on(
    own: PolicyRanges, body: Mapping[str, Any], others: Sequence[PolicyRanges] = ()
) -> ReadinessDecision | None:
    policies = [own, *others]
    node = facts(body)
    return decide(own, node, policies, compose(node.name, node.labels, policies))


def expect(decision: ReadinessDecision | None, wanted: ReadinessAction) -> ReadinessDecision:
    assert decision is not None
    assert decision.action is wanted
    return decision


# --- decide ------------------------------------------------------------------------------------


def test_the_taint_comes_off_once_the_policy_verified_the_node_for_this_spec_and_boot() -> None:
    own = policy("web", {})
    for status in (NodeState.COMPLIANT, NodeState.REMEDIATED):
        decided = decision_on(own, node_body(results={"web": result(own, status)}))
        decided = expect(decided, ReadinessAction.REMOVE)
        assert (decided.taint.key, decided.taint.effect) == (KEY, TaintEffect.NO_SCHEDULE)
        assert decided.reason == "verified by web for boot ID boot-2"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (None, "web has not checked the node yet"),
        ("failed", "web found the node Failed: write failed: Read-only file system"),
        ("drifted", "web found the node Drifted"),
        ("old-boot", "web has not checked the node since it booted"),
        ("old-spec", "web has not checked the node against its current spec"),
    ],
)
def test_the_taint_stays_while_the_policy_has_not_verified_the_node(
    stored: str | None, reason: str
) -> None:
    own = policy("web", {})
    results = {
        None: {},
        "failed": {"web": result(own, NodeState.FAILED)},
        "drifted": {"web": result(own, NodeState.DRIFTED)},
        "old-boot": {"web": result(own, boot="boot-1")},
        "old-spec": {"web": result(policy("web", {}, ports={"protectedPorts": [10250]}))},
    }[stored]
    decided = expect(decision_on(own, node_body(results=results)), ReadinessAction.KEEP)
    assert decided.reason.startswith(reason)


def test_every_policy_that_selects_the_node_and_names_the_taint_must_have_verified_it() -> None:
    web, strict = policy("web", {}), policy("strict", {}, ports={"protectedPorts": [10250]})
    only_web = {"web": result(web, others=[strict])}
    kept = decision_on(web, node_body(results=only_web), [strict])
    kept = expect(kept, ReadinessAction.KEEP)
    assert kept.reason == "strict has not checked the node yet"
    verified = {"web": result(web, others=[strict]), "strict": result(strict, others=[web])}
    removed = decision_on(web, node_body(results=verified), [strict])
    removed = expect(removed, ReadinessAction.REMOVE)
    assert removed.reason == "verified by strict, web for boot ID boot-2"


def test_a_policy_naming_another_key_or_selecting_other_nodes_does_not_hold_the_taint() -> None:
    web = policy("web", {})
    other_key = policy("gpu", {"key": f"{KEY}-gpu"})
    elsewhere = PolicyRanges("db", "2026-11-01T00:00:00Z",
                             parse_spec({"readiness": {}, "nodeSelector": {"matchLabels": {
                                 "pool": "db"}}}))  # fmt: skip
    body = node_body(results={"web": result(web, others=[other_key])})
    decided = decision_on(web, body, [other_key, elsewhere])
    decided = expect(decided, ReadinessAction.REMOVE)


def test_a_taint_with_the_key_and_another_effect_is_not_ours() -> None:
    own = policy("web", {})
    body = node_body([{"key": KEY, "effect": "NoExecute"}], {"web": result(own)})
    assert decision_on(own, body) is None


def test_nothing_is_added_to_a_node_that_did_not_register_with_the_taint() -> None:
    own = policy("web", {})
    assert decision_on(own, node_body([], {"web": result(own, boot="boot-1")})) is None
    retaint = policy("web", {"retaintOnReboot": True})
    assert decision_on(retaint, node_body([], {})) is None  # new: it registered without it
    assert decision_on(retaint, node_body([], {"web": result(retaint)})) is None  # same boot
    assert decision_on(policy("nope", None), node_body()) is None  # names no taint


def test_retaint_on_reboot_puts_the_taint_back_as_noschedule_until_the_recheck() -> None:
    own = policy("web", {"retaintOnReboot": True})
    before = {"web": result(own, boot="boot-1")}
    decided = decision_on(own, node_body([], before, boot="boot-2"))
    decided = expect(decided, ReadinessAction.RESTORE)
    assert decided.taint.effect == TaintEffect.NO_SCHEDULE
    assert "boot ID boot-1 -> boot-2" in decided.reason
    # Back on the node, it stays until the new boot's check, then comes off.
    kept = decision_on(own, node_body([OURS], before, boot="boot-2"))
    kept = expect(kept, ReadinessAction.KEEP)
    rechecked = decision_on(own, node_body([OURS], {"web": result(own)}, boot="boot-2"))
    rechecked = expect(rechecked, ReadinessAction.REMOVE)


# --- release -----------------------------------------------------------------------------------


def test_a_deleted_or_deselecting_policy_releases_its_taint_unless_another_names_it() -> None:
    web = policy("web", {})
    node = facts(node_body(results={"web": result(web)}, labels={"pool": "moved"}))
    released = release(web, node, [web], "no longer selects the node")
    released = expect(released, ReadinessAction.REMOVE)
    assert released.reason == (
        "web no longer selects the node, and no other policy that selects the node names this taint"
    )
    # A remaining policy that selects the node and names the taint decides in its own pass.
    everywhere = PolicyRanges("all", "2026-11-01T00:00:00Z", parse_spec({"readiness": {}}))
    assert release(web, node, [web, everywhere], "was deleted") is None
    # Nothing to release on a node without the taint.
    assert release(web, facts(node_body([], labels={"pool": "moved"})), [], "was deleted") is None


# --- edit_taints -------------------------------------------------------------------------------


def test_the_edit_keeps_every_other_taint_as_it_was() -> None:
    taint_ours = decision_on(policy("web", {}), node_body(results={}))
    assert taint_ours is not None
    remove = ReadinessDecision("n1", taint_ours.taint, ReadinessAction.REMOVE, "")
    restore = ReadinessDecision("n1", taint_ours.taint, ReadinessAction.RESTORE, "")
    same_key_other_effect = {"key": KEY, "effect": "NoExecute"}
    assert edit_taints([THEIRS, OURS, same_key_other_effect], remove) == [
        THEIRS, same_key_other_effect]  # fmt: skip
    assert edit_taints([THEIRS], remove) is None  # already off: no write
    assert edit_taints([THEIRS], restore) == [THEIRS, OURS]
    assert edit_taints([OURS, THEIRS], restore) is None


# --- the agent tolerates them ------------------------------------------------------------------


def test_the_agent_tolerates_its_taint_and_every_readiness_taint_on_its_node_by_key() -> None:
    spec = parse_spec({"readiness": {}})
    node = facts(node_body([OURS, {"key": f"{KEY}-gpu", "effect": "NoExecute"}]))
    tolerations = agent_tolerations(spec, node.availability)
    assert [(t.key, t.operator) for t in tolerations] == [(KEY, "Exists"), (f"{KEY}-gpu", "Exists")]
    assert judge(node.availability, tolerations) is None
    # Another taint still keeps the agent off the node.
    other = facts(node_body([OURS, THEIRS]))
    assert judge(other.availability, agent_tolerations(spec, other.availability)) is not None
    # Without spec.readiness, the node's own readiness taints are still tolerated.
    assert judge(node.availability, agent_tolerations(NodeSysctlPolicySpec(),
                                                      node.availability)) is None  # fmt: skip


# --- the guarded write -------------------------------------------------------------------------


class RacingNodes(RecordingKube):
    """Between our read and our write, another writer changes the Node `races` times."""

    def __init__(self, body: dict[str, Any], races: int, race: Mapping[str, Any]) -> None:
        super().__init__()
        self.node_bodies["n1"] = body
        self.races = races
        self.race = race
        self.sleeps: list[float] = []

    def get_node(self, name: str) -> dict[str, Any] | None:
        read = super().get_node(name)
        if self.races:
            self.races -= 1
            body = self.node_bodies[name]
            body["spec"].setdefault("taints", []).append(copy.deepcopy(dict(self.race)))
            body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return read


def remove_ours() -> ReadinessDecision:
    decided = decision_on(policy("web", {}), node_body(results={"web": result(policy("web", {}))}))
    decided = expect(decided, ReadinessAction.REMOVE)
    return decided


def test_a_conflict_reads_the_node_again_and_keeps_what_the_other_writer_added() -> None:
    kube = RacingNodes(node_body(results={"web": result(policy("web", {}))}), 2, THEIRS)
    own = policy("web", {})
    done = write_decision(kube, remove_ours(), lambda fresh: decide(own, fresh, [own], None),
                          sleep=kube.sleeps.append)  # fmt: skip
    done = expect(done, ReadinessAction.REMOVE)
    assert (len(kube.json_patches), len(kube.sleeps)) == (3, 2)
    assert kube.sleeps[1] > kube.sleeps[0]  # backs off
    assert kube.node_bodies["n1"]["spec"]["taints"] == [THEIRS, THEIRS]
    test, add = kube.json_patches[-1][1]
    assert test == {"op": "test", "path": "/metadata/resourceVersion", "value": "9"}
    assert (add["op"], add["path"]) == ("add", "/spec/taints")


def test_a_conflict_decides_again_from_what_the_node_says_now() -> None:
    # Meanwhile the node rebooted (a new result is due): the taint must stay after all.
    kube = RacingNodes(node_body(results={"web": result(policy("web", {}))}), 1, THEIRS)
    kube.node_bodies["n1"]["status"]["nodeInfo"]["bootID"] = "boot-3"
    own = policy("web", {})
    done = write_decision(kube, remove_ours(), lambda fresh: decide(own, fresh, [own], None),
                          sleep=kube.sleeps.append)  # fmt: skip
    assert done is None
    assert kube.node_bodies["n1"]["spec"]["taints"] == [OURS, THEIRS]


def test_a_node_that_keeps_changing_fails_the_pass_after_a_few_attempts() -> None:
    kube = RacingNodes(node_body(results={"web": result(policy("web", {}))}), 99, THEIRS)
    own = policy("web", {})
    with pytest.raises(TaintConflictError):
        write_decision(kube, remove_ours(), lambda fresh: decide(own, fresh, [own], None),
                       sleep=kube.sleeps.append)  # fmt: skip
    assert len(kube.json_patches) == TAINT_WRITE_ATTEMPTS


def test_only_a_changed_node_is_a_conflict() -> None:
    assert is_conflict(KubeError(409, "Conflict", "the object has been modified"))
    # What kube-apiserver 1.36 answers to a failed test (tests/integration/test_fence.py).
    generic = "the server rejected our request due to an error in our request"
    body = ('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"'
            + generic + '","reason":"Invalid","details":{},"code":422}')  # fmt: skip
    assert is_conflict(KubeError(422, "Invalid", generic, body=body))
    invalid = '{"kind":"Status","details":{"causes":[{"field":"spec.taints[0].effect"}]}}'
    assert not is_conflict(KubeError(422, "Invalid", generic, body=invalid))
    assert not is_conflict(KubeError(422, "Invalid", "spec.taints[0].effect: Unsupported value"))
    assert not is_conflict(KubeError(403, "Forbidden", "nodesysctl fence: ..."))


# --- one pass ----------------------------------------------------------------------------------

SPEC: dict[str, Any] = {"nodeSelector": {"matchLabels": LABELS}, "readiness": {}}


def test_a_pass_removes_the_taint_of_a_verified_node_with_an_event() -> None:
    own = PolicyRanges(POLICY, "2026-11-01T00:00:00Z", parse_spec(SPEC))
    body = node_body([THEIRS, OURS], {POLICY: result(own)})
    kube = RecordingKube()
    kube.node_bodies["n1"] = body
    reconciler(kube).run_once(snapshot([facts(body)], spec=SPEC), NOW)
    assert kube.node_bodies["n1"]["spec"]["taints"] == [THEIRS]
    assert ("Node", "n1", "ReadinessTaintRemoved") in kube.events
    assert not kube.jobs_created  # verified: no check due


def test_a_pass_keeps_the_taint_of_a_failed_node_and_says_why_once() -> None:
    own = PolicyRanges(POLICY, "2026-11-01T00:00:00Z", parse_spec(SPEC))
    body = node_body([OURS], {POLICY: result(own, NodeState.FAILED)})
    kube = RecordingKube()
    kube.node_bodies["n1"] = body
    reconciler(kube).run_once(snapshot([facts(body)], spec=SPEC), NOW)
    assert not kube.json_patches
    # The result was not recorded by this pass: its Event went out when it was.
    assert ("Node", "n1", "ReadinessTaintKept") not in kube.events


def test_a_failed_check_recorded_by_a_pass_keeps_the_taint_with_events() -> None:
    body = node_body([OURS], {})
    kube = RecordingKube()
    kube.node_bodies["n1"] = body
    job = finished_job("n1", succeeded=False, reason="DeadlineExceeded: too long",
                       spec_hash=spec_hash(parse_spec(SPEC)), boot_id="boot-2")  # fmt: skip
    reconciler(kube).run_once(snapshot([facts(body)], spec=SPEC, jobs=[job]), NOW)
    assert not kube.json_patches
    assert ("Node", "n1", "ReadinessTaintKept") in kube.events
    assert ("NodeSysctlPolicy", POLICY, "ReadinessTaintKept") in kube.events
    [message] = {m for m in kube.event_messages if m.startswith(f"{KEY}:NoSchedule stays")}
    assert f"{POLICY} found the node Failed: DeadlineExceeded" in message
