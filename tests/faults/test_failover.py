"""Two operator processes, one Lease: the fault matrix's failover cases.

Each candidate is a real `nodesysctl run --leader-elect` process with short lease timings
(6 s / 3.5 s / 1 s, so a takeover is due within 6 + 2 x 1 = 8 s of the leader's death), and
talks to the API server through its own `BlackholeProxy`, which records when it opened each
connection (a new leader's Kopf opens new ones: its first request) and can cut it off.

Every case ends in `settled(...)` (tests/faults/test_faults.py): nodes compliant, status true,
no duplicate Jobs, each affected Deployment restarted exactly once. The measured times are
printed as `failover: {...}` lines (docs/performance.md#failover).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from devcluster.cluster import DevCluster
from devcluster.waiting import wait_for
from nodesysctl.labels import RESTARTED_AT
from nodesysctl.leasing import ElectionTimings
from nodesysctl.standby import EXIT_LEASE_LOST, STANDBY_ANSWER
from tests.e2e.conftest import OperatorProcess, Policies
from tests.e2e.test_operator import enforce_spec, policy_jobs
from tests.kube_json import read_json
from tests.tcpproxy import BlackholeProxy

from .test_faults import fleet, restart_spec, settled, wait_jobs, with_deployments

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.timeout(420)]

TIMINGS = ElectionTimings(lease_duration=6, renew_deadline=3.5, retry_period=1)
ELECTION_FLAGS = (
    "--leader-elect",
    f"--lease-duration={TIMINGS.lease_duration:g}",
    f"--renew-deadline={TIMINGS.renew_deadline:g}",
    f"--retry-period={TIMINGS.retry_period:g}",
)
# Polling slop of the test itself and a GET + PUT on a loaded machine.
SLACK = 1.5
# From the Lease won to Kopf's first request (the handlers are imported before the election).
STARTUP = 5.0
IDENTITY = re.compile(r"standing by for the lease \S+ as (\S+)")

StartOperator = Callable[..., OperatorProcess]


@dataclass
class Candidate:
    process: OperatorProcess
    proxy: BlackholeProxy
    identity: str
    liveness: str
    exited_at: float | None = None

    def watch_exit(self) -> threading.Thread:
        """Record the moment the process ends (a thread blocked in wait(), not a poll)."""

        def wait() -> None:
            assert self.process.process is not None
            self.process.process.wait()
            self.exited_at = time.time()

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return int(listener.getsockname()[1])


class Election:
    """Candidates for one Lease (a name of this test's own) and what the Lease says."""

    def __init__(
        self,
        start: StartOperator,
        devcluster: DevCluster,
        api: Any,
        tmp: Path,
        namespace: str,
        name: str,
    ) -> None:
        self.start_operator = start
        self.devcluster = devcluster
        self.coordination: Any = client.CoordinationV1Api(api)
        self.tmp = tmp
        self.namespace = namespace
        self.name = name
        self.candidates: list[Candidate] = []

    def start(self, *extra: str) -> Candidate:
        server = urlsplit(self.devcluster.server)
        proxy = BlackholeProxy(server.hostname or "127.0.0.1", server.port or 443)
        index = len(self.candidates)
        kubeconfig = proxy.kubeconfig(self.devcluster.kubeconfig, self.tmp / f"kc-{index}.yaml")
        liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        process = self.start_operator(
            *ELECTION_FLAGS, f"--lease-name={self.name}", f"--lease-namespace={self.namespace}",
            "--liveness", liveness, *extra,
            kubeconfig=kubeconfig,
        )  # fmt: skip

        def identity() -> str | None:
            found = IDENTITY.search(process.log())
            return found.group(1) if found else None

        name = wait_for(identity, timeout=60, what=f"candidate {index} standing by")
        candidate = Candidate(process, proxy, name, liveness)
        self.candidates.append(candidate)
        return candidate

    def lease(self) -> dict[str, Any]:
        body: dict[str, Any] = read_json(
            self.coordination.read_namespaced_lease, self.name, self.namespace
        )
        return body

    def wait_holder(self, candidate: Candidate, timeout: float) -> dict[str, Any]:
        def held() -> dict[str, Any] | None:
            lease = self.lease()
            return lease if lease["spec"].get("holderIdentity") == candidate.identity else None

        return wait_for(held, timeout=timeout, interval=0.05, what=f"{candidate.identity} leads")

    def close(self) -> None:
        """Stop the processes while their proxies still carry the Lease's release."""
        for candidate in self.candidates:
            candidate.process.stop()
            candidate.proxy.close()


@pytest.fixture
def election(
    start_operator: StartOperator,
    devcluster: DevCluster,
    api_client: Any,
    tmp_path: Path,
    test_id: str,
    test_namespace: str,
) -> Iterator[Election]:
    # The Lease in the test's own namespace: the fault matrix installs no operator namespace.
    made = Election(
        start_operator, devcluster, api_client, tmp_path, test_namespace, f"{test_id}-leader"
    )
    yield made
    made.close()


def acquired_at(lease: dict[str, Any]) -> float:
    """spec.acquireTime, written by the new leader from this machine's clock."""
    return datetime.fromisoformat(lease["spec"]["acquireTime"].replace("Z", "+00:00")).timestamp()


def probe(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.status), bytes(answer.read())


def leader_and_standby(election: Election, *extra: str) -> tuple[Candidate, Candidate]:
    leader = election.start(*extra)
    election.wait_holder(leader, timeout=30)
    standby = election.start(*extra)
    # The standby answers its own probes; the leader's Kopf answers on its address.
    assert probe(standby.liveness) == (200, STANDBY_ANSWER)
    wait_for(lambda: probe(leader.liveness)[1] != STANDBY_ANSWER, timeout=30, what="Kopf's probe")
    return leader, standby


def report(case: str, **seconds: float) -> None:
    print("failover: " + json.dumps({"case": case, **{k: round(v, 2) for k, v in seconds.items()}}))


def takeover(election: Election, standby: Candidate, gone_at: float, case: str) -> float:
    """Wait for the standby to hold the Lease; check and report how long it took."""
    lease = election.wait_holder(standby, timeout=TIMINGS.takeover_bound + STARTUP + 30)
    acquired = acquired_at(lease)
    first_request = wait_for(
        lambda: min(standby.proxy.connections_after(acquired), default=None),
        timeout=30,
        what="the new leader's first request",
    )
    report(case, lease_taken=acquired - gone_at, first_request=first_request - gone_at)
    assert acquired - gone_at <= TIMINGS.takeover_bound + SLACK
    assert first_request - gone_at <= TIMINGS.takeover_bound + SLACK + STARTUP
    # After the takeover Kopf's liveness endpoint has the port the standby answered on.
    wait_for(lambda: probe(standby.liveness)[1] != STANDBY_ANSWER, timeout=30, what="Kopf's probe")
    return acquired


def test_leader_killed_mid_rollout_the_standby_takes_over(
    election: Election,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 4)
    apps = with_deployments(api_client, test_namespace, nodes)
    leader, standby = leader_and_standby(election)
    name = f"{test_id}-failroll"
    policies.create(
        name,
        restart_spec(node_factory.selector, test_namespace, rollout={"maxConcurrent": 1}),
    )
    wait_jobs(api_client, name)
    killed_at = time.time()
    leader.process.kill()
    takeover(election, standby, killed_at, "SIGKILL mid-rollout")
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)


def test_leader_killed_mid_restart_wave_the_standby_finishes_it_once(
    election: Election,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 3)
    apps = with_deployments(api_client, test_namespace, nodes)
    # One restart now, the next only 10 s later: the kill lands inside the wave.
    leader, standby = leader_and_standby(
        election, "--restart-burst", "1", "--restarts-per-minute", "6"
    )
    name = f"{test_id}-failwave"
    policies.create(name, restart_spec(node_factory.selector, test_namespace))
    apps_api: Any = client.AppsV1Api(api_client)

    def one_restarted() -> int:
        stamped = 0
        for app in apps:
            dep = read_json(apps_api.read_namespaced_deployment, app, test_namespace)
            stamped += RESTARTED_AT in (
                dep["spec"]["template"]["metadata"].get("annotations") or {}
            )
        return stamped

    stamped = wait_for(one_restarted, timeout=120, what="the first workload restart")
    killed_at = time.time()
    leader.process.kill()
    assert stamped < len(apps), "the whole wave ran before the kill; nothing was tested"
    takeover(election, standby, killed_at, "SIGKILL mid restart wave")
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)


def test_partitioned_leader_stops_before_the_standby_starts(
    election: Election,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 4)
    apps = with_deployments(api_client, test_namespace, nodes)
    leader, standby = leader_and_standby(election)
    name = f"{test_id}-partition"
    policies.create(
        name,
        restart_spec(node_factory.selector, test_namespace, rollout={"maxConcurrent": 1}),
    )
    wait_jobs(api_client, name)
    exit_watch = leader.watch_exit()
    cut_at = leader.proxy.blackhole()
    # Cut off, the leader cannot renew: it ends itself at the renew deadline, with its own code.
    exit_watch.join(timeout=TIMINGS.lease_duration + 30)
    assert leader.exited_at is not None, "the partitioned leader kept running"
    assert leader.process.process is not None
    assert leader.process.process.returncode == EXIT_LEASE_LOST
    acquired = takeover(election, standby, cut_at, "partitioned leader")
    report(
        "partitioned leader",
        leader_exited=leader.exited_at - cut_at,
        standby_took_over=acquired - cut_at,
        gap_with_no_leader=acquired - leader.exited_at,
    )
    # No two actives: the old leader was gone before the new one held the Lease (both times
    # from this machine's clock), and every Job created since the cut is the new leader's.
    assert leader.exited_at < acquired
    assert leader.exited_at - cut_at <= TIMINGS.renew_deadline + TIMINGS.retry_period + SLACK
    settled(api_client, policies, name, nodes, namespace=test_namespace, restarted=apps)
    created = [
        datetime.fromisoformat(j["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        for j in policy_jobs(api_client, name)
    ]
    # A request already on its way at the cut may still land in the next second.
    after_cut = [t.timestamp() for t in created if t.timestamp() > cut_at + 1]
    assert after_cut, "no Job created after the cut: the takeover did nothing"
    # creationTimestamp has whole seconds: a Job of the new leader may show its second.
    assert all(t >= int(acquired) for t in after_cut), (cut_at, acquired, after_cut)


def test_sigterm_releases_the_lease_and_the_standby_takes_it_at_once(
    election: Election,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    nodes = fleet(node_factory, 2)
    leader, standby = leader_and_standby(election)
    exit_watch = leader.watch_exit()
    stopped_at = time.time()
    leader.process.stop()  # SIGTERM, as the kubelet stops a pod
    exit_watch.join(timeout=30)
    assert leader.exited_at is not None
    assert leader.process.process is not None
    assert leader.process.process.returncode == 0
    lease = election.wait_holder(standby, timeout=30)
    acquired = acquired_at(lease)
    report(
        "SIGTERM (release)",
        leader_stopped=leader.exited_at - stopped_at,
        lease_taken_after_exit=acquired - leader.exited_at,
    )
    # Released: taken at the standby's next poll, not after the 6 s lease duration.
    assert acquired - leader.exited_at <= TIMINGS.retry_period + SLACK
    assert lease["spec"]["leaseTransitions"] == 1  # created (0), released (0), taken (1)
    name = f"{test_id}-afterterm"
    policies.create(name, enforce_spec(node_factory.selector))
    settled(api_client, policies, name, nodes)
