"""Restart waves, decided on plain data: which remediated nodes wait for workload restarts, and
what a wave does with each listed workload.

A wave restarts, once, every workload with a pod on the nodes a policy remediated since the last
wave. The reconcile pass lists the pods on those nodes and the candidate workloads, asks
`plan_restart_wave`, and carries the plan out in its order: an Event for a skipped paused
Deployment, a rate-limit token, the patch and an Event for each restart. Where the rate limit
stops it, the next pass plans the same wave again and finds the workloads already stamped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from nodesysctl.api import LabelSelector
from nodesysctl.labels import RESTART_WAVE
from nodesysctl.planning import NodeFacts, NodeResult, format_time, short_hash

MAX_LISTED_WORKLOADS = 10  # in status.lastRestart.workloads; `count` has the total


def restart_wave(nodes: Iterable[NodeFacts], policy: str) -> tuple[str, tuple[str, ...]]:
    """The remediated nodes still waiting for workload restarts, and a stable wave id.

    The id is derived from which checks remediated which nodes, so an operator that restarts
    mid-wave computes the same id and skips the workloads it already restarted.
    """
    pending = sorted(
        (node.name, result.job)
        for node in nodes
        if (result := node.results.get(policy)) is not None and result.restart_pending
    )
    if not pending:
        return "", ()
    wave = short_hash(policy, *(f"{name}={job}" for name, job in pending), length=12)
    return wave, tuple(name for name, _ in pending)


def restarts_done(nodes: Iterable[NodeFacts], policy: str) -> dict[str, NodeResult]:
    """Once a wave is complete: each waiting node's result with the wait over, as stored."""
    return {
        node.name: dataclasses.replace(result, restart_pending=False).as_stored()
        for node in nodes
        if (result := node.results.get(policy)) is not None and result.restart_pending
    }


class RestartAction(StrEnum):
    RESTART = "Restart"
    ALREADY_DONE = "AlreadyDone"  # stamped with this wave's id (before an operator restart)
    SKIP_PAUSED = "SkipPaused"  # a paused Deployment refuses a rollout restart


@dataclasses.dataclass(frozen=True)
class WorkloadStep:
    action: RestartAction
    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def ident(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class RestartPlan:
    """One wave over the listed workloads with pods on its nodes, in the order to carry out."""

    wave: str
    nodes: tuple[str, ...]
    steps: tuple[WorkloadStep, ...]

    def _with(self, action: RestartAction) -> tuple[WorkloadStep, ...]:
        return tuple(step for step in self.steps if step.action == action)

    @property
    def to_restart(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.RESTART)

    @property
    def already_done(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.ALREADY_DONE)

    @property
    def skipped_paused(self) -> tuple[WorkloadStep, ...]:
        return self._with(RestartAction.SKIP_PAUSED)

    def last_restart(self, now: datetime) -> dict[str, Any]:
        """The policy's `status.lastRestart` once every restart of the wave went out."""
        restarted = [
            step.ident
            for step in self.steps
            if step.action in (RestartAction.RESTART, RestartAction.ALREADY_DONE)
        ]
        return {
            "wave": self.wave,
            "at": format_time(now),
            "nodes": len(self.nodes),
            "workloads": restarted[:MAX_LISTED_WORKLOADS],
            "count": len(restarted),
        }


def has_pod_on(workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any of `pods` (the pods on the wave's nodes) belongs to `workload`: same
    namespace, labels matching its selector."""
    namespace = workload["metadata"]["namespace"]
    selector = LabelSelector.model_validate(workload["spec"].get("selector") or {})
    return any(
        pod["metadata"].get("namespace") == namespace
        and selector.matches(pod["metadata"].get("labels") or {})
        for pod in pods
    )


def plan_restart_wave(
    *,
    wave: str,
    nodes: Sequence[str],
    workloads: Mapping[str, Sequence[Mapping[str, Any]]],
    pods: Sequence[Mapping[str, Any]],
) -> RestartPlan:
    """What wave `wave` does with each listed workload (`workloads`: kind -> the listed bodies,
    in the order the policy names the kinds); those without a pod on `nodes` are left out.

    A workload already stamped with the wave id counts as done even when it is paused now.
    """
    steps: list[WorkloadStep] = []
    for kind, listed in workloads.items():
        for workload in listed:
            if not has_pod_on(workload, pods):
                continue
            meta = workload["metadata"]
            template_annotations = (
                workload["spec"]["template"].get("metadata", {}).get("annotations") or {}
            )
            if template_annotations.get(RESTART_WAVE) == wave:
                action = RestartAction.ALREADY_DONE
            elif kind == "Deployment" and workload["spec"].get("paused"):
                action = RestartAction.SKIP_PAUSED
            else:
                action = RestartAction.RESTART
            steps.append(WorkloadStep(action, kind, meta["namespace"], meta["name"], meta["uid"]))
    return RestartPlan(wave=wave, nodes=tuple(nodes), steps=tuple(steps))
