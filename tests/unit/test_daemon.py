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
from nodesysctl.backoff import Backoff
from nodesysctl.daemon import (
    MAX_COALESCE_SECONDS,
    RETRY_FIRST_SECONDS,
    RETRY_JITTER,
    RETRY_MAX_SECONDS,
    NextPass,
    PolicyDaemon,
)
from nodesysctl.nodewatch import NodesListed
from nodesysctl.observed import PodOutcome
from nodesysctl.planning import JobFacts, NodeFacts, NodeResult, NodeState, PolicyRanges
from nodesysctl.reconcile import PassResult, Snapshot
from nodesysctl.state import OperatorState

RANGES = PolicyRanges("p", "2026-01-01T00:00:00Z", parse_spec({}))
OTHER = PolicyRanges("q", "2026-01-02T00:00:00Z", parse_spec({}))
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
    """Policy p's daemon, its backoff without jitter (the waits are exact); the policy index
    holds p and q."""
    backoff = Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, random=lambda: 0.0)
    return PolicyDaemon(
        state, reconciler, "p", "uid-p", BODY, NO_JOBS, NO_PODS,
        policies={"p": [RANGES], "q": [OTHER]}, clock=clock or Clock(), backoff=backoff,
    )  # fmt: skip


def test_a_pass_snapshots_runs_in_a_thread_and_records_what_it_wrote() -> None:
    state = listed_state()
    state.wakeup("q")
    clock = Clock()
    reconciler = FakeReconciler(clock.advance(0.5), PassResult(30.0, {"a": RESULT}, queued={"b"}))
    next_pass = asyncio.run(daemon(state, reconciler, clock).run_one_pass())
    assert next_pass == NextPass(30.0, coalesce=0.5)  # waits as long again as the pass took
    (snap,) = reconciler.snapshots
    assert (snap.name, snap.uid, [n.name for n in snap.nodes]) == ("p", "uid-p", ["a"])
    assert reconciler.threads != [threading.current_thread().name]  # never on the loop
    assert state.written == {("p", "a"): RESULT}
    # Changed on purpose with issue 12: the other policies come from the policy index (Kopf
    # lists it before any daemon starts), no longer from the ranges each pass recorded, so a
    # pass no longer wakes the others; it records the nodes it waits for instead.
    assert list(snap.other_policies) == [OTHER]
    assert not state.wakeup("q").is_set()
    assert state.queued == {"p": frozenset({"b"})}


def test_the_coalescing_wait_is_capped() -> None:
    clock = Clock()
    reconciler = FakeReconciler(clock.advance(60.0), PassResult(5.0, {}))
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

        reconciler = FakeReconciler(event_meanwhile, PassResult(300.0, {}))
        await daemon(state, reconciler).run_one_pass()
        return state.wakeup("p").is_set()

    assert asyncio.run(scenario()) is True


def test_a_failed_pass_records_nothing_and_retries_soon(caplog: pytest.LogCaptureFixture) -> None:
    state = listed_state()
    reconciler = FakeReconciler(ConnectionResetError("apiserver restarting"))
    with caplog.at_level(logging.WARNING, logger="nodesysctl.daemon"):
        next_pass = asyncio.run(daemon(state, reconciler).run_one_pass())
    assert next_pass == NextPass(RETRY_FIRST_SECONDS, failed_generation=1)
    assert state.written == {}
    assert state.queued == {}
    assert "policy p: reconcile pass failed" in caplog.text


# --- Failed passes back off -----------------------------------------------------------------


def test_failed_passes_back_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    fail = ConnectionRefusedError("apiserver down")
    ok = PassResult(30.0, {})
    reconciler = FakeReconciler(*[fail] * 8, ok, fail)
    policy = daemon(listed_state(), reconciler)

    async def passes(count: int) -> list[float]:
        return [(await policy.run_one_pass()).wait for _ in range(count)]

    waits = asyncio.run(passes(10))
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 30, 5]  # the success waits its own delay


def test_each_policy_backs_off_on_its_own() -> None:
    state = listed_state()
    fail = ConnectionRefusedError("apiserver down")
    first = daemon(state, FakeReconciler(fail, fail, fail))
    second = PolicyDaemon(
        state, FakeReconciler(fail), "q", "uid-q", BODY, NO_JOBS, NO_PODS,
        backoff=Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, random=lambda: 0.0),
    )  # fmt: skip

    async def scenario() -> list[float]:
        waits = [(await first.run_one_pass()).wait for _ in range(3)]
        return [*waits, (await second.run_one_pass()).wait]

    assert asyncio.run(scenario()) == [5, 10, 20, 5]


def test_the_default_backoff_jitters_each_wait_by_at_most_a_fifth() -> None:
    fail = ConnectionRefusedError("apiserver down")
    policy = PolicyDaemon(
        listed_state(), FakeReconciler(*[fail] * 9), "p", "uid", BODY, NO_JOBS, NO_PODS
    )

    async def passes() -> list[float]:
        return [(await policy.run_one_pass()).wait for _ in range(9)]

    for wait, full in zip(
        asyncio.run(passes()), [5, 10, 20, 40, 80, 160, 300, 300, 300], strict=True
    ):
        assert full * (1 - RETRY_JITTER) <= wait <= full


def test_each_failure_logs_one_line_and_only_the_first_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = RuntimeError("(503)\nReason: Service Unavailable\nHTTP response body: " + "x" * 500)
    reconciler = FakeReconciler(error, error, error)
    policy = daemon(listed_state(), reconciler)

    async def passes() -> None:
        for _ in range(3):
            await policy.run_one_pass()

    with caplog.at_level(logging.DEBUG, logger="nodesysctl.daemon"):
        asyncio.run(passes())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [bool(r.exc_info) for r in warnings] == [True, False, False]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert [bool(r.exc_info) for r in debug] == [True, True]  # `-v` still shows every one
    lines = [r.getMessage() for r in warnings]
    assert all("\n" not in line for line in lines)
    assert lines[0].startswith(
        "policy p: reconcile pass failed (1 in a row): "
        "RuntimeError: (503) Reason: Service Unavailable HTTP response body: xxx"
    )
    assert lines[0].endswith("...; retrying in 5 s")
    assert "(3 in a row)" in lines[2]
    assert lines[2].endswith("retrying in 20 s")
    assert len(lines[0]) < 400


def test_a_success_after_failures_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reconciler = FakeReconciler(ValueError("boom"), PassResult(30.0, {}))
    policy = daemon(listed_state(), reconciler)

    async def passes() -> None:
        await policy.run_one_pass()
        await policy.run_one_pass()

    with caplog.at_level(logging.INFO, logger="nodesysctl.daemon"):
        asyncio.run(passes())
    assert "policy p: reconcile pass succeeded after 1 failures" in caplog.text
    assert policy.backoff.failures == 0


def test_while_backing_off_only_an_edit_of_the_policy_cuts_the_wait_short() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        state = listed_state()
        body: dict[str, Any] = {"metadata": {"generation": 4}, "spec": {}}
        policy = PolicyDaemon(state, FakeReconciler(), "p", "uid", body, NO_JOBS, NO_PODS)
        # A storm of wake-ups (node changes, Job events, other policies' passes)...
        storm = [loop.call_later(0.01 * i, state.wake, ["p"]) for i in range(1, 20)]
        start = loop.time()
        await policy.wait(NextPass(0.3, failed_generation=4))
        stormed = loop.time() - start
        for handle in storm:
            handle.cancel()

        # ...but an edit (a new generation, and the wake-up of its event) retries at once.
        def edit() -> None:
            body["metadata"]["generation"] = 5
            state.wake(["p"])

        loop.call_later(0.05, edit)
        start = loop.time()
        await policy.wait(NextPass(60.0, failed_generation=4))
        return stormed, loop.time() - start

    stormed, edited = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert stormed >= 0.29  # the whole backoff despite the wake-ups
    assert 0.04 <= edited < 5


def test_an_edit_during_the_failed_pass_is_retried_at_once() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        state = listed_state()
        body: dict[str, Any] = {"metadata": {"generation": 1}, "spec": {}}

        def edited_meanwhile() -> None:  # the edit and its wake-up land while the pass runs
            body["metadata"]["generation"] = 2
            loop.call_soon_threadsafe(state.wake, ["p"])

        reconciler = FakeReconciler(edited_meanwhile, ValueError("conflict"))
        policy = PolicyDaemon(state, reconciler, "p", "uid", body, NO_JOBS, NO_PODS)
        next_pass = await policy.run_one_pass()
        assert next_pass.failed_generation == 1
        await asyncio.sleep(0)  # the wake-up's callback
        start = loop.time()
        await policy.wait(next_pass)
        return loop.time() - start

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=10)) < 1


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


def test_run_waits_for_the_node_list_loops_and_stops_when_cancelled() -> None:
    # Until issue 12 the stopped daemon also dropped the policy's ranges; the policy index
    # has replaced them (a deleted policy leaves the index).
    async def scenario() -> tuple[FakeReconciler, OperatorState]:
        state = OperatorState()
        passes: list[int] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def count() -> None:
            passes.append(1)
            if len(passes) == 3:
                loop.call_soon_threadsafe(done.set)

        reconciler = FakeReconciler(*[count, PassResult(0.0, {})] * 3, PassResult(300.0, {}))
        task = asyncio.create_task(daemon(state, reconciler).run())
        await asyncio.sleep(0.05)
        assert reconciler.snapshots == []  # no pass before the Nodes are listed
        state.apply_node_update(NodesListed([]))
        await asyncio.wait_for(done.wait(), timeout=10)
        task.cancel()  # Kopf stops the daemon: the policy is deleted or the operator exits
        with pytest.raises(asyncio.CancelledError):
            await task
        return reconciler, state

    reconciler, _ = asyncio.run(scenario())
    assert len(reconciler.snapshots) >= 3
