"""What a policy's maintenance windows allow a pass now (`spec.rollout.window`,
`spec.restart.window`), decided on plain data and an injected clock.

Outside the rollout window an Enforce policy's checks still run, check-only (the agent's Audit
mode: nothing is written), so drift is detected and reported as usual; the result says that its
fix waits (`NodeResult.fix_deferred`), and the node is checked again, this time fixing, once the
window opens (`planning.CheckReason.WINDOW_OPENED`). Outside the restart window the restart
wave's rollout restarts and evictions wait; the wave's plan and what was done of it are kept
(`reconcile.KeptWave`), so a wave cut by the end of a window goes on at the next opening with
the workloads it has not restarted yet, each once.

Exempt from both: a node that still carries a readiness taint (`READINESS_TAINT_PREFIX`), which
serves no workload yet. Its check fixes at once, and the evictions of the DaemonSet pods on it
(the only pods that run on a node tainted that way: they tolerate every taint) go at once too.
A rollout restart of a Deployment or StatefulSet reaches every node it runs on, so it waits.

The pass asks `gate` once and carries out what it says; the `Deferred` condition and the wait
until the opening come from here as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from nodesysctl.api import MaintenanceWindow, Mode, NodeSysctlPolicySpec
from nodesysctl.planning import NodeFacts, NodeResult, NodeState, format_time
from nodesysctl.policy_status import condition
from nodesysctl.restarts import WRITES, RestartAction, RestartPlan, WorkloadStep
from nodesysctl.windows import Window

DEFERRED_CONDITION = "Deferred"  # True while fixes or restarts wait for a window
FIXES_DEFERRED_EVENT = "FixDeferred"
RESTARTS_DEFERRED_EVENT = "RestartsDeferred"


@dataclasses.dataclass(frozen=True)
class WindowState:
    """One window at one instant: open or not, and until when (None: no window, always open)."""

    spec: MaintenanceWindow | None
    open: bool
    opens_at: datetime | None = None  # closed: the next opening
    closes_at: datetime | None = None  # open inside a window: when it closes

    @classmethod
    def at(cls, spec: MaintenanceWindow | None, now: datetime) -> WindowState:
        if spec is None:
            return cls(None, True)
        window = Window.from_spec(spec)
        closes = window.next_closing(now)
        if closes is not None:
            return cls(spec, True, closes_at=closes)
        return cls(spec, False, opens_at=window.next_opening(now))

    def seconds_until_opening(self, now: datetime) -> float | None:
        return None if self.opens_at is None else (self.opens_at - now).total_seconds()

    def describe(self) -> str:
        """The window as a person reads it: `Saturday, Sunday 22:00-04:00 Europe/Berlin`."""
        if self.spec is None:
            return "no window"
        days = self.spec.days
        named = "every day" if len(days) == 7 else ", ".join(str(d) for d in days)
        return f"{named} {self.spec.start}-{self.spec.end} {self.spec.time_zone}"


@dataclasses.dataclass(frozen=True)
class MaintenanceGate:
    """What the windows allow a pass at one instant (`gate`)."""

    rollout: WindowState
    restart: WindowState
    enforce: bool
    unverified: frozenset[str] = frozenset()  # nodes still carrying a readiness taint

    @property
    def windowed(self) -> bool:
        """Whether the policy has a window at all (else it reports no `Deferred` condition)."""
        return self.rollout.spec is not None or self.restart.spec is not None

    def fixes(self, node: str) -> bool:
        """Whether a check of `node` may fix it now (else it runs check-only)."""
        return not self.enforce or self.rollout.open or node in self.unverified

    def check_only(self, node: str) -> bool:
        return not self.fixes(node)

    def step_goes(self, step: WorkloadStep) -> bool:
        """Whether a restart step may be carried out now."""
        if self.restart.open:
            return True
        return step.action == RestartAction.EVICT and step.node in self.unverified

    def held(self, steps: Iterable[WorkloadStep]) -> list[WorkloadStep]:
        return [step for step in steps if not self.step_goes(step)]

    def allowed(self, plan: RestartPlan) -> RestartPlan:
        """The wave's plan without the writes the restart window holds now: the pass carries
        out (and retries) only these; the held ones stay open in the whole plan."""
        steps = tuple(s for s in plan.steps if s.action not in WRITES or self.step_goes(s))
        return dataclasses.replace(plan, steps=steps)

    def deferred_fixes(self, nodes: Iterable[NodeFacts], policy: str) -> list[str]:
        """The nodes whose current result ran check-only and that may not be fixed yet: each
        is checked again, fixing, at the opening."""
        return sorted(
            node.name
            for node in nodes
            if (result := node.results.get(policy)) is not None
            and result.fix_deferred
            and not self.fixes(node.name)
        )

    @staticmethod
    def drifted(nodes: Iterable[NodeFacts], policy: str, names: Collection[str]) -> int:
        """How many of `names` were found drifted (the fixes that wait, as the status says)."""
        return sum(
            1
            for node in nodes
            if node.name in names
            and (result := node.results.get(policy)) is not None
            and result.status == NodeState.DRIFTED
        )

    def fixes_wait(self, waiting: Collection[str], now: datetime) -> float | None:
        """Seconds until the rollout window opens, when fixes wait for it (else None)."""
        return self.rollout.seconds_until_opening(now) if waiting else None

    def restarts_wait(self, held: Collection[WorkloadStep], now: datetime) -> float | None:
        """Seconds until the restart window opens, when restarts wait for it (else None)."""
        return self.restart.seconds_until_opening(now) if held else None

    def restarts_deferred(self, held: int) -> str:
        """The `RestartsDeferred` Event's message: how many steps wait, until when."""
        opens = self.restart.opens_at
        return (
            f"{held} restarts wait for the restart window ({self.restart.describe()}), which "
            f"opens at {format_time(opens) if opens is not None else 'its next opening'}"
        )

    def conditions(
        self, fixes_waiting: int, restarts_waiting: int, generation: int
    ) -> tuple[dict[str, Any], ...]:
        """The `Deferred` condition of a policy with a window; none for one without."""
        if not self.windowed:
            return ()
        return (self.condition(fixes_waiting, restarts_waiting, generation),)

    def condition(
        self, fixes_waiting: int, restarts_waiting: int, generation: int
    ) -> dict[str, Any]:
        """`Deferred`: True, with each closed window's next opening, while something waits."""
        parts = []
        if fixes_waiting and self.rollout.opens_at is not None:
            parts.append(
                f"fixes of {fixes_waiting} drifted nodes wait for the rollout window "
                f"({self.rollout.describe()}), which opens at {format_time(self.rollout.opens_at)}"
            )
        if restarts_waiting and self.restart.opens_at is not None:
            parts.append(
                f"{restarts_waiting} restarts wait for the restart window "
                f"({self.restart.describe()}), which opens at {format_time(self.restart.opens_at)}"
            )
        if parts:
            reason = {
                (True, False): "RolloutWindowClosed",
                (False, True): "RestartWindowClosed",
            }.get((bool(fixes_waiting), bool(restarts_waiting)), "WindowsClosed")
            return condition(DEFERRED_CONDITION, True, reason, "; ".join(parts), generation)
        states = [
            f"{name} window {state_text(state)}"
            for name, state in (("rollout", self.rollout), ("restart", self.restart))
            if state.spec is not None
        ]
        message = "nothing waits for a window: " + ", ".join(states)
        return condition(DEFERRED_CONDITION, False, "NothingDeferred", message, generation)


def earliest(*waits: float | None) -> float | None:
    """The shortest of the waits that are set (None when none is)."""
    return min((w for w in waits if w is not None), default=None)


def state_text(state: WindowState) -> str:
    if state.closes_at is not None:
        return f"open until {format_time(state.closes_at)}"
    if state.opens_at is not None:
        return f"closed until {format_time(state.opens_at)}"
    return "absent"


def gate(
    spec: NodeSysctlPolicySpec, now: datetime, unverified: Collection[str] = ()
) -> MaintenanceGate:
    """The windows of `spec` at `now`. `unverified`: the selected nodes that still carry a
    readiness taint (exempt from both windows)."""
    restart = spec.restart.window if spec.restart is not None else None
    return MaintenanceGate(
        rollout=WindowState.at(spec.rollout.window, now),
        restart=WindowState.at(restart, now),
        enforce=spec.remediation.mode == Mode.ENFORCE,
        unverified=frozenset(unverified),
    )


def check_only_spec(spec: NodeSysctlPolicySpec) -> NodeSysctlPolicySpec:
    """The spec a check-only run of an Enforce policy renders its Job from: the same values in
    Audit mode (the agent checks them, mounts no sysctl directory and writes nothing)."""
    remediation = spec.remediation.model_copy(update={"mode": Mode.AUDIT})
    return spec.model_copy(update={"remediation": remediation})


def deferred_result(result: NodeResult, rollout: WindowState) -> NodeResult:
    """A check-only result as stored: drift found says until when its fix waits."""
    if not result.fix_deferred or result.status != NodeState.DRIFTED:
        return result
    opens = format_time(rollout.opens_at) if rollout.opens_at is not None else "its opening"
    return dataclasses.replace(
        result, message=f"fix waits for the rollout window (opens {opens}): {result.message}"
    )
