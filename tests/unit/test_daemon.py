"""One policy's daemon loop without Kopf: a fake reconciler stands in for the pass."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from nodesysctl.api import parse_spec
from nodesysctl.daemon import (
    MAX_COALESCE_SECONDS,
    PASS_RETRY_SECONDS,
    NextPass,
    PolicyDaemon,
)
from nodesysctl.nodewatch import NodesListed
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, PolicyRanges
from nodesysctl.reconcile import PassResult, Snapshot
from nodesysctl.state import OperatorState

RANGES = PolicyRanges("p", "2026-01-01T00:00:00Z", parse_spec({}))
RESULT = NodeResult(NodeState.COMPLIANT, "h", "b1", datetime(2026, 1, 1), "job-a")
BODY: dict[str, Any] = {"metadata": {"generation": 1}, "spec": {}}
NO_JOBS: dict[str, list[JobFacts]] = {}
NO_PODS: dict[str, list[PodOutcome]] = {}


class FakeReconciler:
    """Plays scripted passes: each a PassResult, an exception to raise, or a callable run
    first (in the pass's worker thread, as the real pass runs)."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.snapshots: list[Snapshot] = []
        self.threads: list[str] = []

    def run_once(self, snap: Snapshot, now: datetime) -> PassResult:
        self.snapshots.append(snap)
        self.threads.append(threading.current_thread().name)
        step = self.script.pop(0)
        while callable(step):
            step()
            step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, PassResult)
        return step


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> Callable[[], None]:
        def step() -> None:
            self.now += seconds

        return step


def listed_state() -> OperatorState:
    state = OperatorState()
    state.apply_node_update(NodesListed([NodeFacts("a", {}, "b1", {})]))
    return state


def daemon(
    state: OperatorState, reconciler: FakeReconciler, clock: Clock | None = None
) -> PolicyDaemon:
    return PolicyDaemon(
        state, reconciler, "p", "uid-p", BODY, NO_JOBS, NO_PODS, clock=clock or Clock()
    )


def test_a_pass_snapshots_runs_in_a_thread_and_records_what_it_wrote() -> None:
    state = listed_state()
    state.wakeup("q")
    clock = Clock()
    reconciler = FakeReconciler(clock.advance(0.5), PassResult(30.0, RANGES, {"a": RESULT}))
    next_pass = asyncio.run(daemon(state, reconciler, clock).run_one_pass())
    assert next_pass == NextPass(30.0, coalesce=0.5)  # waits as long again as the pass took
    (snap,) = reconciler.snapshots
    assert (snap.name, snap.uid, [n.name for n in snap.nodes]) == ("p", "uid-p", ["a"])
    assert reconciler.threads != [threading.current_thread().name]  # never on the loop
    assert state.written == {("p", "a"): RESULT}
    assert state.policy_ranges == {"p": RANGES}
    assert state.wakeup("q").is_set()  # new ranges: the others look again


def test_the_coalescing_wait_is_capped() -> None:
    clock = Clock()
    reconciler = FakeReconciler(clock.advance(60.0), PassResult(5.0, RANGES, {}))
    next_pass = asyncio.run(daemon(listed_state(), reconciler, clock).run_one_pass())
    assert next_pass == NextPass(5.0, coalesce=MAX_COALESCE_SECONDS)


def test_a_wake_up_during_the_pass_is_kept_for_the_next_one() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        state = listed_state()
        state.wakeup("p").set()  # from before the pass: the pass itself serves it
        arrived = threading.Event()

        def handler() -> None:  # on the loop, as Kopf runs the event handlers
            state.wake(["p"])
            arrived.set()

        def event_meanwhile() -> None:  # in the pass's thread: an event arrives meanwhile
            loop.call_soon_threadsafe(handler)
            assert arrived.wait(timeout=10)

        reconciler = FakeReconciler(event_meanwhile, PassResult(300.0, RANGES, {}))
        await daemon(state, reconciler).run_one_pass()
        return state.wakeup("p").is_set()

    assert asyncio.run(scenario()) is True


def test_a_failed_pass_records_nothing_and_retries_soon(caplog: pytest.LogCaptureFixture) -> None:
    state = listed_state()
    reconciler = FakeReconciler(ConnectionResetError("apiserver restarting"))
    with caplog.at_level(logging.WARNING, logger="nodesysctl.daemon"):
        next_pass = asyncio.run(daemon(state, reconciler).run_one_pass())
    assert next_pass == NextPass(PASS_RETRY_SECONDS)
    assert state.written == {}
    assert state.policy_ranges == {}
    assert "policy p: reconcile pass failed" in caplog.text


def test_the_wait_ends_at_a_wake_up_or_after_its_time() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        state = listed_state()
        policy = daemon(state, FakeReconciler())
        start = loop.time()
        await policy.wait(NextPass(0.05))
        timed_out = loop.time() - start
        loop.call_later(0.05, state.wake, ["p"])
        start = loop.time()
        await policy.wait(NextPass(60.0))
        return timed_out, loop.time() - start

    timed_out, woken = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert 0.04 <= timed_out < 5
    assert 0.04 <= woken < 5


def test_run_waits_for_the_node_list_loops_and_drops_its_ranges_when_stopped() -> None:
    async def scenario() -> tuple[FakeReconciler, OperatorState]:
        state = OperatorState()
        passes: list[int] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def count() -> None:
            passes.append(1)
            if len(passes) == 3:
                loop.call_soon_threadsafe(done.set)

        reconciler = FakeReconciler(
            *[count, PassResult(0.0, RANGES, {})] * 3, PassResult(300.0, RANGES, {})
        )
        task = asyncio.create_task(daemon(state, reconciler).run())
        await asyncio.sleep(0.05)
        assert reconciler.snapshots == []  # no pass before the Nodes are listed
        state.apply_node_update(NodesListed([]))
        await asyncio.wait_for(done.wait(), timeout=10)
        assert state.policy_ranges == {"p": RANGES}
        task.cancel()  # Kopf stops the daemon: the policy is deleted or the operator exits
        with pytest.raises(asyncio.CancelledError):
            await task
        return reconciler, state

    reconciler, state = asyncio.run(scenario())
    assert len(reconciler.snapshots) >= 3
    assert state.policy_ranges == {}
