"""End-to-end harness: the operator as a real process against the dev cluster.

The operator runs exactly as a user runs it (`python -m nodesysctl.cli run`), with a kubeconfig
and no test hooks; the tests observe it only through the API server and the nodes' kernels.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import install
from devcluster.cluster import DevCluster
from devcluster.install import JOB_NAMESPACE
from devcluster.waiting import wait_for
from nodesysctl import GROUP, PLURAL, VERSION

from ..fence import apply_fenced


class OperatorProcess:
    """One `nodesysctl run` process; its log is kept for the test report."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        self.process = install.start_operator(self.kubeconfig, self.log_path, *self.extra)
        return self

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean anything up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def job_namespace(devcluster: DevCluster) -> str:
    """The agent Jobs' namespace, privileged as in manifests/base (the Jobs need it). The
    fault matrix shares this fixture, so the namespace may exist already."""
    try:
        devcluster.create_namespace(
            JOB_NAMESPACE,
            {
                "pod-security.kubernetes.io/enforce": "privileged",
                "pod-security.kubernetes.io/warn": "privileged",
            },
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    return JOB_NAMESPACE


@pytest.fixture(scope="session", autouse=True)
def operator_identity(
    devcluster: DevCluster, job_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The operator's namespace, ServiceAccount, RBAC and admission fence from
    manifests/overlays/default, installed (and enforced) for the whole e2e session, so every
    end-to-end test runs with the fence on: the operator as its ServiceAccount is fenced
    (test_least_privilege); as admin it passes the fence's break-glass exemption, and the Job
    controller, garbage collector, TTL controller and kubelet go through it either way.
    Removed at the end, the fence before the ClusterRoleBinding it reads."""
    directory = tmp_path_factory.mktemp("operator-identity")
    docs = install.operator_rbac_documents(devcluster)
    manifest = apply_fenced(devcluster, docs, directory)
    yield manifest
    removal = directory / "remove.yaml"
    removal.write_text(yaml.safe_dump_all(list(reversed(docs))))
    devcluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(removal))


@pytest.fixture
def start_operator(
    devcluster: DevCluster,
    crds_installed: list[str],
    job_namespace: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator()` starts one more operator process (previous ones should be stopped or
    killed first), as admin unless given a `kubeconfig`; all are stopped at the end, and their
    logs are attached on failure."""
    started: list[OperatorProcess] = []

    def start(*extra: str, kubeconfig: Path | None = None) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        proc = OperatorProcess(kubeconfig or devcluster.kubeconfig, log_path, *extra).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for index, proc in enumerate(started):
            print(f"\n----- operator process {index} log -----\n{proc.log()[-20000:]}")


@pytest.fixture
def operator(start_operator: Callable[..., OperatorProcess]) -> OperatorProcess:
    """The operator, running for the whole test."""
    return start_operator()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


class Policies:
    """Create policies for one test; delete them (and wait until they are gone) afterwards,
    while the operator still runs so its finalizer can be released."""

    def __init__(self, api: Any) -> None:
        self.custom: Any = client.CustomObjectsApi(api)
        self.names: list[str] = []

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeSysctlPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        created: dict[str, Any] = self.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, body
        )
        self.names.append(name)
        return created

    def get(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return body

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, {"spec": spec},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def delete(self, name: str, timeout: float = 60) -> None:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for(lambda: not self._exists(name), timeout=timeout, what=f"policy {name} deleted")

    def _exists(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def cleanup(self) -> None:
        for name in self.names:
            self.delete(name)


@pytest.fixture
def policies(start_operator: Callable[..., OperatorProcess], api_client: Any) -> Iterator[Policies]:
    made = Policies(api_client)
    yield made
    made.cleanup()
