"""Leader election, the I/O: read and write one Lease, acquire it, keep it, release it.

What to do with the Lease is decided by `nodesysctl.leasing` (pure); this module only carries
it out, blocking, in the thread that calls it. The official client's
`kubernetes.leaderelection` is not used: it compares wall-clock times, sets no request timeout
(a leader cut off from the API server blocks in a renewal past its deadline while a standby
takes over) and never releases the Lease.

Every request has a total timeout of half a retry period and goes through an `ApiClient` of
its own (one connection, no urllib3 retries), so a renewal never queues behind Kopf's or the
node watch's requests and never outlives its deadline by retrying a dead connection.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from kubernetes.client import ApiClient

from nodesysctl.kube import FIELD_MANAGER, KubeError, Rest
from nodesysctl.leasing import (
    ElectionTimings,
    LeaseRecord,
    Observation,
    Step,
    decide,
    next_record,
    observe,
    record_from_spec,
    released_record,
    renewal_overdue,
    spec_from_record,
    standby_poll_delay,
)

logger = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
HTTP_NOT_FOUND = 404


def lease_api_client(base: ApiClient) -> ApiClient:
    """The same credentials over a pool of its own: one connection, and no urllib3 retries
    (each would restart the request's timeout; the election loop retries in its own time)."""
    configuration = copy.deepcopy(base.configuration)
    configuration.retries = False
    configuration.connection_pool_maxsize = 1
    return ApiClient(configuration)


class Leases(Protocol):
    """One Lease, read and written (`LeaseStore`; a fake in the unit tests)."""

    namespace: str
    name: str

    def read(self) -> tuple[LeaseRecord, str] | None: ...
    def create(self, record: LeaseRecord) -> str: ...
    def replace(self, record: LeaseRecord, resource_version: str) -> str: ...


class LeaseStore:
    """GET, POST and PUT of one Lease; a PUT carries the resourceVersion it read (409 if the
    Lease changed since)."""

    def __init__(self, rest: Rest, namespace: str, name: str) -> None:
        self.rest = rest  # with its timeout: ElectionTimings.request_timeout
        self.namespace = namespace
        self.name = name
        self.collection = f"/apis/{LEASE_API_VERSION}/namespaces/{namespace}/leases"

    def read(self) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion; None if there is no such Lease."""
        try:
            body = self.rest.request("GET", f"{self.collection}/{self.name}")
        except KubeError as exc:
            if exc.status == HTTP_NOT_FOUND:
                return None
            raise
        return record_from_spec(body.get("spec")), str(body["metadata"]["resourceVersion"])

    def create(self, record: LeaseRecord) -> str:
        return self._write("POST", self.collection, record, None)

    def replace(self, record: LeaseRecord, resource_version: str) -> str:
        return self._write("PUT", f"{self.collection}/{self.name}", record, resource_version)

    def _write(
        self, method: str, path: str, record: LeaseRecord, resource_version: str | None
    ) -> str:
        metadata = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        body = {
            "apiVersion": LEASE_API_VERSION,
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec_from_record(record),
        }
        answer = self.rest.request(method, path, query={"fieldManager": FIELD_MANAGER}, body=body)
        return str(answer["metadata"]["resourceVersion"])


def _no_change(leading: bool) -> None:
    del leading


class LeaderElector:
    """One candidate. `acquire` blocks until it leads (or `stop` is set); `keep_leading`
    renews until `stop` is set or leadership is lost; `release` hands the Lease over.

    `on_leading(True/False)` is called when this process starts and stops leading (the
    metrics' `nodesysctl_leader`, wired by the entry point)."""

    def __init__(
        self,
        store: Leases,
        identity: str,
        timings: ElectionTimings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        jitter: Callable[[], float] = random.random,
        on_leading: Callable[[bool], None] = _no_change,
    ) -> None:
        self.store = store
        self.identity = identity
        self.timings = timings
        self.clock = clock
        self.wall = wall
        self.jitter = jitter
        self.on_leading = on_leading
        self.observation: Observation | None = None
        self.resource_version = ""
        self.last_renewal_sent = 0.0
        self.leading = False

    def attempt(self) -> bool:
        """One round trip: read the Lease, decide, write. True if this process holds it now."""
        sent = self.clock()
        try:
            found = self.store.read()
            if found is None:
                self.observation = None
                record = None
            else:
                record, self.resource_version = found
                self.observation = observe(self.observation, record, self.clock())
            step = decide(self.observation, self.identity, self.clock())
            if step is Step.WAIT:
                return False
            wanted = next_record(record, self.identity, self.timings, self.wall())
            if step is Step.CREATE:
                self.resource_version = self.store.create(wanted)
            else:
                self.resource_version = self.store.replace(wanted, self.resource_version)
        except KubeError as exc:
            # 409: another candidate wrote first; anything else: retried next period.
            logger.info("lease %s/%s: %s", self.store.namespace, self.store.name, exc)
            return False
        self.observation = Observation(wanted, self.clock())
        self.last_renewal_sent = sent
        return True

    def held_by_another(self) -> bool:
        return self.observation is not None and self.observation.record.holder not in (
            "",
            self.identity,
        )

    def acquire(self, stop: threading.Event) -> bool:
        self._set_leading(False)  # a standby says so from its start (nodesysctl_leader 0)
        while not stop.is_set():
            if self.attempt():
                logger.info("leading: the lease %s/%s is ours (%s)", self.store.namespace,
                            self.store.name, self.identity)  # fmt: skip
                self._set_leading(True)
                return True
            stop.wait(standby_poll_delay(self.timings, self.jitter()))
        return False

    def keep_leading(self, stop: threading.Event) -> bool:
        """Renew every retry period until `stop` is set (True) or leadership is lost (False):
        no renewal succeeded within the renew deadline, or another candidate holds the Lease."""
        while not stop.wait(self.timings.retry_period):
            if self.attempt():
                continue
            if stop.is_set():
                return True
            overdue = renewal_overdue(self.last_renewal_sent, self.clock(), self.timings)
            if overdue or self.held_by_another():
                logger.error(
                    "lost the lease %s/%s: %s", self.store.namespace, self.store.name,
                    "renew deadline passed" if overdue else "another candidate holds it",
                )  # fmt: skip
                self._set_leading(False)
                return False
        return True

    def release(self) -> None:
        """Write an empty holder (client-go's ReleaseOnCancel): a standby takes over at its
        next poll instead of waiting out the lease duration. Only a Lease still ours: the
        write carries the resourceVersion of our last write."""
        if not self.leading or self.observation is None:
            return
        try:
            self.store.replace(released_record(self.observation.record, self.wall()),
                               self.resource_version)  # fmt: skip
            logger.info("released the lease %s/%s", self.store.namespace, self.store.name)
        except KubeError as exc:
            logger.warning("could not release the lease (it expires by itself): %s", exc)
        self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        self.on_leading(leading)
