"""etcd + kube-apiserver + kube-controller-manager + kube-scheduler as local processes.

Everything listens on loopback ports chosen free at start. The cluster directory (a temp dir
unless given) holds the PKI, the kubeconfigs, etcd's data and one log file per process; it is
removed by :meth:`ControlPlane.stop` unless ``keep_dir`` (or ``NODESYSCTL_DEVCLUSTER_KEEP=1``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kubernetes import client

from .binaries import Binaries, find_binaries
from .certs import Pki, make_pki, write_kubeconfig
from .waiting import WaitTimeoutError, wait_for

log = logging.getLogger(__name__)

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_NODE_PORT_RANGE = "30000-32767"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOG_TAIL_LINES = 60
DIR_PREFIX = "nodesysctl-devcluster-"
OWNER_FILE = "owner.pid"  # the Python process that runs the cluster (for reap_stale_clusters)
# How often the node lifecycle controller looks at every node's heartbeats (its default).
NODE_MONITOR_PERIOD_SECONDS = 5.0


class ControlPlaneError(RuntimeError):
    """A component failed to start or to become ready; the message has its log tail."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message shows kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """prctl(PR_SET_PDEATHSIG, SIGTERM): the component dies if the Python process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log.info("starting %s (log: %s)", self.name, self.log_path)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; always reaps the process."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %gs; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Ports:
    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)


class ControlPlane:
    """A real, single-node-less Kubernetes control plane on loopback.

    >>> with ControlPlane() as cp:
    ...     api = cp.api_client()
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        binaries: Binaries | None = None,
        keep_dir: bool | None = None,
        node_monitor_grace_seconds: float = 60.0,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        start_timeout: float = 120.0,
    ) -> None:
        self.binaries = binaries or find_binaries()
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_dir = (
            keep_dir
            if keep_dir is not None
            else os.environ.get("NODESYSCTL_DEVCLUSTER_KEEP") == "1"
        )
        self.log_dir = self.dir / "logs"
        self.ports = Ports()
        # How long the node lifecycle controller waits for a heartbeat before it marks a
        # node Unknown (upstream default 50 s); the simulated kubelet's renew period follows.
        self.node_monitor_grace_seconds = node_monitor_grace_seconds
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.start_timeout = start_timeout
        self.components: list[Component] = []
        self._pki: Pki | None = None
        self._stopped = False

    # ----------------------------------------------------------------- addresses and files
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise ControlPlaneError("the control plane is not started")
        return self._pki

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    # ----------------------------------------------------------------- clients
    def configuration(self) -> client.Configuration:
        admin = self.pki.clients["admin"]
        config = client.Configuration(host=self.server)
        config.ssl_ca_cert = str(self.pki.ca.cert)
        config.cert_file = str(admin.cert)
        config.key_file = str(admin.key)
        config.connection_pool_maxsize = 32
        return config

    def api_client(self) -> client.ApiClient:
        """A new admin (system:masters) client; close it when done (``with`` works)."""
        return client.ApiClient(self.configuration())

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as admin."""
        argv = [str(self.binaries.kubectl), f"--kubeconfig={self.admin_kubeconfig}", *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        atexit.register(self.stop)
        try:
            (self.dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
            self.log_dir.mkdir(exist_ok=True)
            self._pki = make_pki(self.dir / "pki")
            self._write_kubeconfigs()
            self._start_etcd()
            self._wait_for_etcd()
            self._start_apiserver()
            self._wait_for_apiserver()
            self._start_controller_manager()
            self._start_scheduler()
            self._wait_for_controllers()
        except BaseException:
            self.stop()
            raise
        log.info("control plane ready at %s in %.1fs", self.server, time.monotonic() - started)

    def stop(self) -> None:
        """Stop the components (newest first) and remove the cluster directory."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for comp in reversed(self.components):
            comp.stop()
        if self._own_dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.keep_dir:
            log.warning("keeping the dev cluster directory %s", self.dir)

    def restart(self, name: str) -> None:
        """Restart one component in place (same flags, ports and data directory) and wait
        until it is ready again: etcd or kube-apiserver going down under clients, for fault
        tests. A component stopped beforehand (``component(name).stop()``) is just started."""
        comp = self.component(name)
        comp.stop()
        comp.start()
        if name == "etcd":
            self._wait_for_etcd()
        elif name == "kube-apiserver":
            self._wait_for_apiserver()
        else:
            self._wait_for_controllers()

    def check_running(self) -> None:
        """Raise :class:`ControlPlaneError` (with the log tail) if a component has died."""
        for comp in self.components:
            comp.check_running()

    def logs(self) -> str:
        """The tail of every component's log, for failure reports."""
        return "\n".join(
            f"===== {comp.name} ({comp.log_path})\n{log_tail(comp.log_path)}"
            for comp in self.components
        )

    # ----------------------------------------------------------------- the components
    def _write_kubeconfigs(self) -> None:
        pki = self.pki
        write_kubeconfig(
            self.admin_kubeconfig,
            server=self.server,
            ca=pki.ca.cert,
            client=pki.clients["admin"],
            user="admin",
        )
        for name in ("kube-controller-manager", "kube-scheduler"):
            write_kubeconfig(
                self.dir / f"{name}.kubeconfig",
                server=self.server,
                ca=pki.ca.cert,
                client=pki.clients[name],
                user=name,
            )

    def _launch(self, name: str, argv: list[str]) -> Component:
        comp = Component(name, argv, self.log_dir / f"{name}.log")
        self.components.append(comp)
        comp.start()
        return comp

    def _start_etcd(self) -> None:
        client_url = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{self.ports.etcd_peer}"
        self._launch(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=devcluster",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=devcluster={peer_url}",
                "--unsafe-no-fsync=true",  # test data: speed over durability
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._launch(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
                f"--proxy-client-key-file={pki.front_proxy_client.key}",
                "--authorization-mode=Node,RBAC",
                # Real nodes' kubelets (devcluster.realnode) each get only their own Node.
                "--enable-admission-plugins=NodeRestriction",
                # Logs/exec/port-forward: the API server reaches a real kubelet at the node's
                # own address (inside its network namespace), never by resolving its name.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki.clients['kube-apiserver-kubelet-client'].cert}",
                f"--kubelet-client-key={pki.clients['kube-apiserver-kubelet-client'].key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--service-node-port-range={SERVICE_NODE_PORT_RANGE}",
                "--allow-privileged=true",  # the agent Jobs are privileged
                # The "kubernetes" Service's Endpoints may not hold a loopback address.
                "--endpoint-reconciler-type=none",
                "--max-requests-inflight=800",
                "--max-mutating-requests-inflight=400",
                *self.extra_apiserver_args,
            ],
        )

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kubeconfig = self.dir / "kube-controller-manager.kubeconfig"
        self._launch(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.controller_manager}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                "--leader-elect=false",
                # every default-on controller: job, ttl-after-finished, deployment, replicaset,
                # garbage-collector, node-lifecycle, serviceaccount, namespace, podgc, ...
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--node-monitor-grace-period={self.node_monitor_grace_seconds:g}s",
                # Spelled out (it is the default): the lease margin in docs/controlplane.md
                # counts one monitor period between a renewal and the controller seeing it.
                f"--node-monitor-period={NODE_MONITOR_PERIOD_SECONDS:g}s",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                *self.extra_controller_manager_args,
            ],
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.dir / "kube-scheduler.kubeconfig"
        self._launch(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports.scheduler}",
                f"--cert-dir={self.dir / 'scheduler-certs'}",
                "--leader-elect=false",
            ],
        )

    # ----------------------------------------------------------------- readiness
    def _get(self, url: str, *, context: ssl.SSLContext | None = None) -> str:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return str(resp.read().decode())

    def _admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        admin = self.pki.clients["admin"]
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        return ctx

    def _wait(self, what: str, probe: Component, check: Callable[[], object]) -> None:
        def ready() -> bool:
            self.check_running()
            return bool(check())

        try:
            wait_for(
                ready,
                timeout=self.start_timeout,
                what=what,
                interval=0.25,
                fatal=(ControlPlaneError,),
            )
        except WaitTimeoutError as exc:
            raise ControlPlaneError(
                f"{exc}; last lines of {probe.log_path}:\n{log_tail(probe.log_path)}"
            ) from exc

    def _wait_for_etcd(self) -> None:
        etcd_health = f"http://127.0.0.1:{self.ports.etcd_client}/health"
        self._wait(
            "etcd /health",
            self.component("etcd"),
            lambda: json.loads(self._get(etcd_health)).get("health") == "true",
        )

    def _wait_for_apiserver(self) -> None:
        admin_ctx = self._admin_ssl_context()
        self._wait(
            "kube-apiserver /readyz",
            self.component("kube-apiserver"),
            lambda: self._get(f"{self.server}/readyz", context=admin_ctx) == "ok",
        )

    def _wait_for_controllers(self) -> None:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed at start
        for name, port in (
            ("kube-controller-manager", self.ports.controller_manager),
            ("kube-scheduler", self.ports.scheduler),
        ):
            self._wait(
                f"{name} /healthz",
                self.component(name),
                functools.partial(self._get, f"https://127.0.0.1:{port}/healthz", context=insecure),
            )
        # The serviceaccount controller makes "default" in each namespace; pods need it.
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            self._wait(
                "the default ServiceAccount in namespace default",
                self.component("kube-controller-manager"),
                lambda: core.read_namespaced_service_account("default", "default"),
            )
