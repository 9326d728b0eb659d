"""The simulated kubelet's heartbeats: every node's Lease renewals, in a process of their own.

Why a process: the simulated kubelet shares its Python process with pod work (agent runs,
pod status writes) and, in the benchmark, with the floor's script and the harness, and every
thread there competes for one GIL. With three CPU-busy threads in that process a renewal took
55 ms (up to 0.6 s) instead of 5 ms on an idle cluster, and the old loop managed ~20
renewals/s while agents ran (docs/controlplane.md has the measurements). In a process of its
own the renewals compete only for the CPUs. Real kubelets are separate processes too.

The parent (:class:`Heartbeats`) starts a Python running :func:`main` here with the API
server's address and a client certificate, and sends one JSON command per line on its stdin:
add, remove, pause, resume, now (renew at once, optionally posting the conditions), ready
(what the kubelet reports as Ready, for such a post), stats. The child
(:class:`HeartbeatWorkers`, :func:`main`) answers ``stats`` and reports errors on its stdout,
and exits when its stdin closes (the parent stopped or died).

The renewals: every node once per fixed period, each on its own phase (:mod:`.renewals`),
sent by a bounded pool of worker threads that sleep until the next due renewal; one of them
(the leader) watches the clock, the others wait for it to take a renewal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .api_formats import MERGE, STRATEGIC, now
from .leases import NODE_LEASE_NAMESPACE, kubelet_conditions, lease_body, renew_lease_body
from .renewals import LeaseStats, RenewSchedule, percentile

log = logging.getLogger(__name__)

Json = dict[str, Any]

# A worker with nothing due wakes at least this often to see the stop event.
_IDLE_WAKE_SECONDS = 1.0
# A renewal taken this late while every worker was busy starts one more worker (up to the
# bound): on saturated cores a renewal takes 100-250 ms instead of 3 ms (OS scheduling
# latency at every hop), so the requests in flight, not the CPU, limit the rate.
_GROW_WHEN_LATE_SECONDS = 0.25
_STATS_TIMEOUT_SECONDS = 30.0
_LATENCIES_KEPT = 20_000  # the latest renewals' latencies, for the percentiles
_CHILD_MAIN = "import sys; from devcluster.kubelet.heartbeats import main; sys.exit(main())"


def _check(
    renew_interval: float, lease_duration_seconds: int, parallelism: int, max_parallelism: int
) -> None:
    if not 0 < renew_interval < lease_duration_seconds:
        raise ValueError(
            f"the renew interval ({renew_interval:g} s) must be positive and shorter than "
            f"the lease duration ({lease_duration_seconds} s)"
        )
    if not 1 <= parallelism <= max_parallelism:
        raise ValueError(
            f"need 1 <= parallelism ({parallelism}) <= max_parallelism ({max_parallelism})"
        )


class HeartbeatWorkers:
    """The schedule and the renewal workers (they run in the heartbeat process; unit tests
    run them with fake clients): :meth:`start` starts ``parallelism`` worker threads, more
    are started while renewals go out late, up to ``max_parallelism``."""

    def __init__(
        self,
        core: Any,
        coordination: Any,
        stop: threading.Event,
        report_error: Callable[[str], None],
        *,
        renew_interval: float,
        lease_duration_seconds: int,
        parallelism: int,
        max_parallelism: int,
    ) -> None:
        _check(renew_interval, lease_duration_seconds, parallelism, max_parallelism)
        self.core = core
        self.coordination = coordination
        self._stop = stop
        self._report_error = report_error
        self.renew_interval = renew_interval
        self.lease_duration_seconds = lease_duration_seconds
        self.parallelism = parallelism
        self.max_parallelism = max_parallelism
        self._threads: list[threading.Thread] = []
        self._busy = 0  # workers sending a renewal right now
        # All state is guarded by _state. One idle worker (the leader) sleeps until the next
        # due time, the others until the leader takes a renewal: N workers do not all wake
        # for every renewal.
        self._state = threading.Lock()
        self._leader_wake = threading.Condition(self._state)
        self._follower_wake = threading.Condition(self._state)
        self._leader_until: float | None = None  # when the leader wakes; None: no leader
        self._schedule = RenewSchedule(renew_interval, time.monotonic())
        self._paused: set[str] = set()  # heartbeats stopped on purpose (a "hung" kubelet)
        self._post_conditions: set[str] = set()  # conditions to post with the next renewal
        self._not_ready: set[str] = set()  # reported Ready=False by the kubelet (set_ready)
        self._last_sent: dict[str, float] = {}  # monotonic time of each node's last heartbeat
        self._never_renewed: set[str] = set()
        self._reset_window()

    # ----------------------------------------------------------------- commands
    def add(self, name: str, created: float | None = None) -> None:
        """A registered node whose Lease was just created (its first heartbeat, at
        ``created``, monotonic): its first renewal at its phase point, within one period."""
        with self._state:
            at = time.monotonic()
            self._last_sent[name] = at if created is None else min(created, at)
            self._never_renewed.add(name)
            self._wake_for_new_due(self._schedule.add(name, at))

    def remove(self, name: str) -> None:
        with self._state:
            self._schedule.remove(name)
            self._paused.discard(name)
            self._not_ready.discard(name)
            self._post_conditions.discard(name)
            self._last_sent.pop(name, None)
            self._never_renewed.discard(name)

    def heartbeat_now(self, name: str, *, post_conditions: bool) -> None:
        """Renew this node's Lease as soon as a worker is free and, with ``post_conditions``,
        post its conditions too (the controller marked it Unknown). For a node whose
        heartbeats are paused this waits for :meth:`resume`."""
        with self._state:
            if name not in self._schedule:
                return
            if post_conditions:
                self._post_conditions.add(name)
            if name not in self._paused:
                at = time.monotonic()
                self._schedule.due_now(name, at)
                self._wake_for_new_due(at)

    def set_ready(self, name: str, ready: bool) -> None:
        """What the kubelet itself reports as the node's Ready condition (``node.set_ready``):
        a repost after the controller's Unknown says the same."""
        with self._state:
            if ready:
                self._not_ready.discard(name)
            else:
                self._not_ready.add(name)

    def pause(self, name: str) -> None:
        """Stop this node's heartbeats (renewals, condition posts)."""
        with self._state:
            self._paused.add(name)

    def resume(self, name: str, *, post_conditions: bool) -> None:
        """Heartbeats again, the first one at once (with the conditions if asked)."""
        with self._state:
            self._paused.discard(name)
            # The pause is not a gap of the renewal workers: it is left out of the stats.
            self._last_sent.pop(name, None)
        self.heartbeat_now(name, post_conditions=post_conditions)

    def stats(self, *, reset: bool = False) -> LeaseStats:
        """The renewals since start or the last ``reset``; ``reset`` begins a new window."""
        at = time.monotonic()
        with self._state:
            ages = [at - sent for name, sent in self._last_sent.items() if name not in self._paused]
            latencies = sorted(self._latencies)
            stats = LeaseStats(
                nodes=len(self._schedule),
                period_seconds=self.renew_interval,
                parallelism=len(self._threads),
                renewals=self._renewals,
                failures=self._failures,
                max_gap_seconds=self._max_gap,
                oldest_lease_age_seconds=max(ages, default=0.0),
                max_late_seconds=self._max_late,
                mean_latency_ms=1000 * self._latency_sum / max(self._renewals, 1),
                p50_latency_ms=1000 * percentile(latencies, 0.5),
                p99_latency_ms=1000 * percentile(latencies, 0.99),
                max_latency_ms=1000 * self._latency_max,
                never_renewed=len(self._never_renewed),
            )
            if reset:
                self._reset_window()
        return stats

    def wake_all(self) -> None:
        """Let every worker see the stop event now."""
        with self._state:
            self._leader_wake.notify_all()
            self._follower_wake.notify_all()

    # ----------------------------------------------------------------- the workers
    def start(self) -> None:
        with self._state:
            for _ in range(self.parallelism):
                self._start_worker()

    def join(self, timeout: float) -> None:
        """After the stop event: wait for the workers (each at most ``timeout``)."""
        self.wake_all()
        with self._state:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _start_worker(self) -> None:  # holding _state
        thread = threading.Thread(
            target=self.run_worker, name=f"heartbeat-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def run_worker(self) -> None:
        """Take the most overdue node, renew it, put it back on its next phase point; sleep
        until something is due. Until the stop event is set."""
        while True:
            with self._state:
                taken = self._take_due()
                if taken is None:
                    return
                name, due = taken
                self._busy += 1
                skip = name in self._paused  # stays scheduled: resume() needs no re-adding
                post = name in self._post_conditions and not skip
                if post:
                    self._post_conditions.discard(name)
            sent = time.monotonic()
            renewed = posted = True
            if not skip:
                renewed = self._renew_one(name)
                posted = not post or self._post_one(name)
            done = time.monotonic()
            with self._state:
                self._busy -= 1
                if not skip and name in self._schedule:
                    self._account(name, due, sent, done, renewed)
                    if not posted:
                        self._post_conditions.add(name)  # retried with the next renewal
                following = self._schedule.reschedule(name, done)
                if following is not None:
                    self._wake_for_new_due(following)

    def _take_due(self) -> tuple[str, float] | None:
        """Wait (holding _state) for a due renewal; None once the stop event is set."""
        while not self._stop.is_set():
            at = time.monotonic()
            taken = self._schedule.pop_due(at)
            if taken is not None:
                late = at - taken[1] > _GROW_WHEN_LATE_SECONDS
                all_busy = self._busy + 1 >= len(self._threads)  # this one is about to be
                if late and all_busy and len(self._threads) < self.max_parallelism:
                    self._start_worker()
                self._follower_wake.notify()  # someone else watches the clock now
                return taken
            if self._leader_until is not None:
                self._follower_wake.wait(_IDLE_WAKE_SECONDS)
                continue
            upcoming = self._schedule.next_due()
            wait = _IDLE_WAKE_SECONDS if upcoming is None else upcoming - at
            wait = min(max(wait, 0.0), _IDLE_WAKE_SECONDS)
            self._leader_until = at + wait
            try:
                self._leader_wake.wait(wait)
            finally:
                self._leader_until = None
        return None

    def _wake_for_new_due(self, due: float) -> None:
        """A renewal is due at ``due`` (holding _state): wake the leader if it sleeps past
        that, or a worker to become the leader if there is none."""
        if self._leader_until is None:
            self._follower_wake.notify()
        elif due < self._leader_until:
            self._leader_wake.notify()

    def _reset_window(self) -> None:
        self._latencies: deque[float] = deque(maxlen=_LATENCIES_KEPT)
        self._renewals = self._failures = 0
        self._max_gap = self._max_late = self._latency_sum = self._latency_max = 0.0

    def _account(self, name: str, due: float, sent: float, done: float, ok: bool) -> None:
        if not ok:
            self._failures += 1
            return
        previous = self._last_sent.get(name)
        if previous is not None:
            self._max_gap = max(self._max_gap, sent - previous)
        self._last_sent[name] = sent
        self._never_renewed.discard(name)
        self._renewals += 1
        self._latency_sum += done - sent
        self._latencies.append(done - sent)
        self._latency_max = max(self._latency_max, done - sent)
        self._max_late = max(self._max_late, sent - due)

    # ----------------------------------------------------------------- requests
    def _renew_one(self, name: str) -> bool:
        """Renew the Lease (recreate it if it was deleted); whether the heartbeat went out."""
        try:
            # Raw answer: building a V1Lease from every answer cost 4 ms of client CPU per
            # renewal under load, more than the request itself.
            _discard(
                self.coordination.patch_namespaced_lease(
                    name,
                    NODE_LEASE_NAMESPACE,
                    renew_lease_body(name),
                    _content_type=MERGE,
                    _preload_content=False,
                )
            )
            return True
        except ApiException as exc:
            if exc.status == 404:
                return self._recreate_lease(name)
            self._report_error(f"renewing the lease of {name}: {exc.status} {exc.reason}")
        except Exception as exc:
            if not self._stop.is_set():
                self._report_error(f"renewing the lease of {name}: {exc!r}")
        return False

    def _recreate_lease(self, name: str) -> bool:
        try:
            node = json.loads(self.core.read_node(name, _preload_content=False).data)
            body = lease_body(name, node["metadata"]["uid"], self.lease_duration_seconds)
            _discard(
                self.coordination.create_namespaced_lease(
                    NODE_LEASE_NAMESPACE, body, _preload_content=False
                )
            )
            return True
        except ApiException as exc:
            if exc.status != 404:  # 404: the Node is gone too (being removed)
                self._report_error(f"recreating the lease of {name}: {exc.status} {exc.reason}")
        return False

    def _post_one(self, name: str) -> bool:
        """Post all four conditions as the kubelet reports them, with a new heartbeat: what a
        kubelet posts at once when it finds its status changed behind its back (the
        controller's NodeStatusUnknown). The controller then removes its ``unreachable``
        taints itself. Whether it went out (a deleted node counts)."""
        with self._state:
            ready = name not in self._not_ready
        body = {"status": {"conditions": kubelet_conditions(now(), ready=ready)}}
        try:
            _discard(
                self.core.patch_node_status(
                    name, body, _content_type=STRATEGIC, _preload_content=False
                )
            )
            return True
        except ApiException as exc:
            if exc.status == 404:
                return True
            self._report_error(f"posting the conditions of {name}: {exc.status} {exc.reason}")
        except Exception as exc:
            if not self._stop.is_set():
                self._report_error(f"posting the conditions of {name}: {exc!r}")
        return False


def _discard(resp: Any) -> None:
    """Read and drop a raw (``_preload_content=False``) answer; its connection goes back to
    the pool."""
    resp.drain_conn()
    resp.release_conn()


# --------------------------------------------------------------------- the parent's side
class Heartbeats:
    """Starts the heartbeat process and sends it commands (thread-safe)."""

    def __init__(
        self,
        configuration: client.Configuration,
        report_error: Callable[[str], None],
        *,
        renew_interval: float,
        lease_duration_seconds: int,
        parallelism: int,
        max_parallelism: int,
    ) -> None:
        # Checked here, where a mistake raises, not in the child.
        _check(renew_interval, lease_duration_seconds, parallelism, max_parallelism)
        self._argv = [
            # Not `-m`: the package imports this module first, and runpy warns about that.
            sys.executable, "-c", _CHILD_MAIN,
            "--server", str(configuration.host),
            "--ca", str(configuration.ssl_ca_cert),
            "--cert", str(configuration.cert_file),
            "--key", str(configuration.key_file),
            "--renew-interval", repr(renew_interval),
            "--lease-duration", str(lease_duration_seconds),
            "--parallelism", str(parallelism),
            "--max-parallelism", str(max_parallelism),
        ]  # fmt: skip
        self.renew_interval = renew_interval
        self.parallelism = parallelism
        self._report_error = report_error
        self._process: subprocess.Popen[str] | None = None
        self._write_lock = threading.Lock()
        self._replies: dict[int, Json] = {}
        self._replied = threading.Condition()
        self._next_id = 0
        self._paused: set[str] = set()
        self._reader: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        # The child imports devcluster from where this process found it, whatever its cwd.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,  # line-buffered: each command goes out when written
            env={**os.environ, "PYTHONPATH": path},
        )
        self._reader = threading.Thread(
            target=self._read, name="sim-kubelet-heartbeats", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the heartbeat process is not started")
        return self._process.pid

    def stop(self) -> None:
        """Close the child's stdin (it exits) and wait for it."""
        self._stopping = True
        proc = self._process
        if proc is None:
            return
        with self._write_lock:
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    # ----------------------------------------------------------------- commands
    def add(self, name: str, created: float) -> None:
        """A node whose Lease was created at ``created`` (``time.monotonic()``: one clock for
        all processes on Linux, so the first gap is measured from the creation itself)."""
        self._send({"op": "add", "name": name, "created": created})

    def remove(self, name: str) -> None:
        self._paused.discard(name)
        self._send({"op": "remove", "name": name})

    def pause(self, name: str) -> None:
        self._paused.add(name)
        self._send({"op": "pause", "name": name})

    def resume(self, name: str, *, post_conditions: bool) -> None:
        self._paused.discard(name)
        self._send({"op": "resume", "name": name, "post": post_conditions})

    def paused(self, name: str) -> bool:
        return name in self._paused

    def heartbeat_now(self, name: str, *, post_conditions: bool) -> None:
        self._send({"op": "now", "name": name, "post": post_conditions})

    def set_ready(self, name: str, ready: bool) -> None:
        self._send({"op": "ready", "name": name, "ready": ready})

    def stats(self, *, reset: bool = False) -> LeaseStats:
        with self._replied:
            self._next_id += 1
            ident = self._next_id
        self._send({"op": "stats", "reset": reset, "id": ident})
        with self._replied:
            if not self._replied.wait_for(
                lambda: ident in self._replies or self._dead(), _STATS_TIMEOUT_SECONDS
            ):
                raise TimeoutError("the heartbeat process did not answer within 30 s")
            if ident not in self._replies:
                raise RuntimeError("the heartbeat process is gone")
            return LeaseStats(**self._replies.pop(ident)["stats"])

    def _dead(self) -> bool:
        return self._process is None or self._process.poll() is not None

    def _send(self, command: Json) -> None:
        proc = self._process
        if proc is None or proc.stdin is None:
            raise RuntimeError("the heartbeat process is not started")
        line = json.dumps(command) + "\n"
        with self._write_lock:
            proc.stdin.write(line)

    def _read(self) -> None:
        proc = self._process
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            message = json.loads(line)
            if "error" in message:
                self._report_error(message["error"])
            else:
                with self._replied:
                    self._replies[message["id"]] = message
                    self._replied.notify_all()
        code = proc.wait()
        if not self._stopping:
            self._report_error(f"the heartbeat process exited with code {code}")
        with self._replied:
            self._replied.notify_all()


# --------------------------------------------------------------------- the child's side
def _serve(workers: HeartbeatWorkers, commands: IO[str], answer: Callable[[Json], None]) -> None:
    """Apply every command line until ``commands`` ends."""
    for line in commands:
        command = json.loads(line)
        op, name = command["op"], command.get("name", "")
        if op == "add":
            workers.add(name, command.get("created"))
        elif op == "remove":
            workers.remove(name)
        elif op == "pause":
            workers.pause(name)
        elif op == "resume":
            workers.resume(name, post_conditions=command["post"])
        elif op == "now":
            workers.heartbeat_now(name, post_conditions=command["post"])
        elif op == "ready":
            workers.set_ready(name, command["ready"])
        elif op == "stats":
            stats = workers.stats(reset=command["reset"])
            answer({"id": command["id"], "stats": vars(stats)})
        else:
            answer({"error": f"heartbeat process: unknown command {op!r}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.kubelet.heartbeats")
    for flag in ("--server", "--ca", "--cert", "--key"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--renew-interval", type=float, required=True)
    parser.add_argument("--lease-duration", type=int, required=True)
    parser.add_argument("--parallelism", type=int, required=True)
    parser.add_argument("--max-parallelism", type=int, required=True)
    args = parser.parse_args(argv)
    configuration = client.Configuration(host=args.server)
    configuration.ssl_ca_cert = args.ca
    configuration.cert_file = args.cert
    configuration.key_file = args.key
    configuration.connection_pool_maxsize = args.max_parallelism + 2
    out_lock = threading.Lock()

    def answer(message: Json) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    stop = threading.Event()
    with client.ApiClient(configuration) as api:
        workers = HeartbeatWorkers(
            client.CoreV1Api(api),
            client.CoordinationV1Api(api),
            stop,
            lambda message: answer({"error": message}),
            renew_interval=args.renew_interval,
            lease_duration_seconds=args.lease_duration,
            parallelism=args.parallelism,
            max_parallelism=args.max_parallelism,
        )
        workers.start()
        try:
            _serve(workers, sys.stdin, answer)  # until the parent closes stdin (or dies)
        finally:
            stop.set()
            workers.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
