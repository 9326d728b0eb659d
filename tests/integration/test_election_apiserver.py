"""Leader election's Lease I/O (`nodesysctl.election`) against the real API server: create,
read and resourceVersion-guarded replace of a `coordination.k8s.io/v1` Lease, two electors
handing it over, and a request to an API server that stopped answering giving up within its
timeout (through a black-holed TCP proxy, the shape of a partition)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes
import pytest

from devcluster.cluster import DevCluster
from nodesysctl.election import LeaderElector, LeaseStore, lease_api_client
from nodesysctl.kube import KubeError, Rest
from nodesysctl.leasing import ElectionTimings, LeaseRecord
from tests.tcpproxy import BlackholeProxy

pytestmark = pytest.mark.integration

TIMINGS = ElectionTimings(6, 3.5, 1)


def rest_for(kubeconfig: Path, timeout: float) -> Rest:
    base = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return Rest(lease_api_client(base), timeout=timeout)


def test_lease_store_create_read_and_guarded_replace(
    devcluster: DevCluster, test_namespace: str
) -> None:
    store = LeaseStore(rest_for(devcluster.kubeconfig, 5), test_namespace, "election")
    assert store.read() is None
    record = LeaseRecord("a_1", 6, "2026-12-01T20:00:00.000000Z", "2026-12-01T20:00:00.000000Z")
    version = store.create(record)
    found = store.read()
    assert found == (record, version)
    renewed = LeaseRecord("a_1", 6, record.acquire_time, "2026-12-01T20:00:01.000000Z")
    newer = store.replace(renewed, version)
    with pytest.raises(KubeError) as stale:
        store.replace(LeaseRecord("b_2", 6, record.acquire_time, record.renew_time, 1), version)
    assert stale.value.status == 409  # the resourceVersion read before the renewal
    with pytest.raises(KubeError) as again:
        store.create(record)
    assert again.value.status == 409
    assert store.read() == (renewed, newer)


def test_two_electors_hand_the_lease_over_on_release(
    devcluster: DevCluster, test_namespace: str
) -> None:
    def elector(identity: str) -> LeaderElector:
        store = LeaseStore(rest_for(devcluster.kubeconfig, 0.5), test_namespace, "handover")
        return LeaderElector(store, identity, TIMINGS)

    leader, standby = elector("a_1"), elector("b_2")
    assert leader.acquire(threading.Event())
    assert not standby.attempt()
    leader.release()
    assert standby.attempt()  # at once: a released Lease is not waited out
    found = standby.store.read()
    assert found is not None
    assert (found[0].holder, found[0].transitions) == ("b_2", 1)


def test_a_request_to_a_silent_api_server_gives_up_within_its_timeout(
    devcluster: DevCluster, test_namespace: str, tmp_path: Path
) -> None:
    server = urlsplit(devcluster.server)
    proxy = BlackholeProxy(server.hostname or "127.0.0.1", server.port or 443)
    try:
        kubeconfig = proxy.kubeconfig(devcluster.kubeconfig, tmp_path / "proxied.yaml")
        store = LeaseStore(rest_for(kubeconfig, TIMINGS.request_timeout), test_namespace, "cut")
        assert store.read() is None  # through the proxy, answered
        proxy.blackhole()
        times: list[float] = []
        for _ in range(3):  # the kept-alive connection, then new ones
            started = time.monotonic()
            with pytest.raises(KubeError) as unreachable:
                store.read()
            times.append(time.monotonic() - started)
            assert unreachable.value.status == 0
        # No urllib3 retry restarts the clock: each gives up after its 0.5 s, not a multiple.
        assert max(times) < TIMINGS.request_timeout + 0.4, times
    finally:
        proxy.close()
