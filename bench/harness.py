"""The benchmark's cluster: a DevCluster whose API server audits the operator's identity.

The operator runs as a real process (`python -m nodesysctl.cli run`) with its own client
certificate (user `nodesysctl-operator`, group system:masters). The API server writes an audit
event for every request of that user and nothing else, so requests are counted per identity,
verb and resource; `apiserver_request_total` (all clients) is scraped alongside.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.certs import KeyPair, write_kubeconfig
from devcluster.cluster import DevCluster
from devcluster.controlplane import DIR_PREFIX, ControlPlane
from devcluster.waiting import wait_for
from nodesysctl import GROUP, PLURAL, VERSION
from nodesysctl.cli import METRICS_FLAG

REPO = Path(__file__).resolve().parents[1]
OPERATOR_USER = "nodesysctl-operator"
JOB_NAMESPACE = "nodesysctl-jobs"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# The node-monitor grace period of the benchmark's controller-manager: longer than a real
# cluster's 50 s so that thousands of simulated nodes renew their Leases less often than a
# real kubelet does (docs/controlplane.md: the lease margin).
BENCH_GRACE_SECONDS = 180.0

AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def mint_client_cert(ca: KeyPair, directory: Path, user: str, group: str) -> KeyPair:
    """A client certificate for `user` in `group`, signed by the dev cluster's CA."""
    pair = KeyPair(directory / f"{user}.crt", directory / f"{user}.key")
    ext = directory / f"{user}.ext"
    ext.write_text("extendedKeyUsage = clientAuth\nkeyUsage = critical,digitalSignature\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pair.key),
             cwd=directory)  # fmt: skip
    csr = directory / f"{user}.csr"
    _openssl("req", "-new", "-key", str(pair.key), "-subj", f"/O={group}/CN={user}",
             "-out", str(csr), cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-set_serial", str(int(time.time() * 1000)), "-days", "2", "-sha256",
             "-extfile", str(ext), "-out", str(pair.cert), cwd=directory)  # fmt: skip
    return pair


@dataclass(frozen=True)
class ProcStats:
    cpu_seconds: float
    rss_mib: float
    hwm_mib: float

    @classmethod
    def of(cls, pid: int) -> ProcStats:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )

        def mib(key: str) -> float:
            return int(status[key].split()[0]) / 1024

        return cls(cpu, mib("VmRSS"), mib("VmHWM"))


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra = extra  # more flags of `nodesysctl run`
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        # /metrics on a free loopback port unless a flag says where (:8081 may be taken).
        metrics = () if METRICS_FLAG in self.extra else (METRICS_FLAG, "127.0.0.1:0")
        argv = [sys.executable, "-m", "nodesysctl.cli", "run", "--job-namespace", JOB_NAMESPACE,
                *metrics, *self.extra]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self) -> ProcStats:
        return ProcStats.of(self.pid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class AuditLog:
    """Counts the operator's requests from the API server's audit log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        if not self.path.exists():
            return
        with self.path.open() as lines:
            for line in lines:
                event = json.loads(line)
                if event.get("auditID") in seen:
                    continue  # a watch is logged when it starts and when it ends
                received = datetime.fromisoformat(
                    event["requestReceivedTimestamp"].replace("Z", "+00:00")
                )
                if since <= received <= until:
                    seen.add(event["auditID"])
                    yield event

    def timeline(self, since: datetime, until: datetime) -> dict[str, dict[str, float]]:
        """First and last moment (seconds after `since`) of each "verb resource" of the operator."""
        out: dict[str, dict[str, float]] = {}
        for event in self.events(since, until):
            ref = event.get("objectRef") or {}
            key = f"{event['verb']} {ref.get('resource', '?')}"
            if ref.get("subresource"):
                key += "/" + ref["subresource"]
            at = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            offset = round((at - since).total_seconds(), 2)
            span = out.setdefault(key, {"first": offset, "last": offset})
            span["first"], span["last"] = min(span["first"], offset), max(span["last"], offset)
        return dict(sorted(out.items()))

    def count(self, since: datetime, until: datetime) -> dict[str, int]:
        """{"verb resource[/subresource]": requests} of the operator in the window."""
        counts: collections.Counter[str] = collections.Counter()
        for event in self.events(since, until):
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?"))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            counts[f"{event['verb']} {resource}"] += 1
        return dict(sorted(counts.items()))


def parse_request_total(text: str) -> dict[str, float]:
    """apiserver_request_total summed by "VERB resource[/subresource]"."""
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        totals[f"{labels.get('verb', '?')} {resource}"] += float(value)
    return dict(totals)


def diff_counts(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    out = {key: after[key] - before.get(key, 0.0) for key in after}
    return {key: value for key, value in sorted(out.items()) if value}


class BenchCluster:
    """Start with `with BenchCluster() as bench:`; everything is removed on exit."""

    def __init__(
        self, *, grace_seconds: float = BENCH_GRACE_SECONDS, **kubelet_options: Any
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        audit_policy = self.dir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self.audit = AuditLog(self.dir / "audit.log")
        control_plane = ControlPlane(
            self.dir,
            extra_apiserver_args=[
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit.path}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ],
            node_monitor_grace_seconds=grace_seconds,
        )
        # The kubelet renews every Lease once per RENEW_FRACTION_OF_GRACE of it.
        self.cluster = DevCluster(control_plane, **kubelet_options)
        self.operator_kubeconfig = self.dir / "operator.kubeconfig"

    def __enter__(self) -> BenchCluster:
        self.cluster.start()
        pki = self.cluster.control_plane.pki
        pair = mint_client_cert(pki.ca, pki.directory, OPERATOR_USER, "system:masters")
        write_kubeconfig(
            self.operator_kubeconfig,
            server=self.cluster.server,
            ca=pki.ca.cert,
            client=pair,
            user=OPERATOR_USER,
        )
        self.cluster.install_crds(REPO / "crds")
        self.cluster.create_namespace(
            JOB_NAMESPACE,
            {
                "pod-security.kubernetes.io/enforce": "privileged",
                "pod-security.kubernetes.io/warn": "privileged",
            },
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- API helpers
    @property
    def api(self) -> Any:
        return self.cluster.api

    def start_operator(self, name: str, *extra: str) -> OperatorProcess:
        """Start an operator process and return once it watches everything it watches."""
        since = utcnow()
        log_path = self.dir / f"{name}.log"
        operator = OperatorProcess(self.operator_kubeconfig, log_path, *extra).start()
        wanted = {"nodes", "jobs", "pods", PLURAL}

        def watching() -> bool:
            if operator.process is not None and operator.process.poll() is not None:
                raise RuntimeError(f"the operator exited: {operator.log_path.read_text()[-3000:]}")
            events = self.audit.events(since, utcnow())
            started = {
                (e.get("objectRef") or {}).get("resource") for e in events if e["verb"] == "watch"
            }
            return wanted <= started

        wait_for(watching, timeout=300, what="the operator's watches", interval=0.5,
                 fatal=(RuntimeError,))  # fmt: skip
        return operator

    def scrape_metrics(self) -> dict[str, float]:
        pki = self.cluster.control_plane.pki
        admin = pki.clients["admin"]
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        with urllib.request.urlopen(f"{self.cluster.server}/metrics", context=ctx, timeout=30) as r:
            return parse_request_total(r.read().decode())

    def wait_audit_flushed(self) -> None:
        """The audit backend writes in batches (at most 1 s late): wait for the marker."""
        marker = f"bench-flush-{time.monotonic_ns()}"
        op_api = client.ApiClient(
            _config_from(self.operator_kubeconfig)
        )  # a request as the operator's user
        with op_api, contextlib.suppress(ApiException):
            client.CoreV1Api(op_api).read_namespace(marker)

        def flushed() -> bool:
            return self.audit.path.exists() and marker in self.audit.path.read_text()

        wait_for(flushed, timeout=30, what="the audit log to be flushed")

    def policy(self, name: str) -> dict[str, Any] | None:
        try:
            custom: Any = client.CustomObjectsApi(self.api)
            body: dict[str, Any] = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    def create_policy(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeSysctlPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        client.CustomObjectsApi(self.api).create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

    def delete_policy(self, name: str, timeout: float = 300) -> None:
        try:
            client.CustomObjectsApi(self.api).delete_cluster_custom_object(
                GROUP, VERSION, PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        wait_for(lambda: self.policy(name) is None, timeout=timeout, what=f"{name} deleted")

    def count_jobs(self, namespace: str) -> int:
        batch: Any = client.BatchV1Api(self.api)
        jobs = batch.list_namespaced_job(namespace, _preload_content=False)
        return len(json.loads(jobs.data)["items"])

    def patch_nodes(self, patches: list[tuple[str, dict[str, Any]]], *, status: bool) -> None:
        core: Any = client.CoreV1Api(self.api)
        call = core.patch_node_status if status else core.patch_node
        content = "application/strategic-merge-patch+json" if status else None

        def one(item: tuple[str, dict[str, Any]]) -> None:
            kwargs = {"_content_type": content} if content else {}
            call(item[0], item[1], _preload_content=False, **kwargs)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, patches))


def _die_with_parent() -> None:  # runs in the forked child
    """prctl(PR_SET_PDEATHSIG, SIGTERM): the operator stops if the benchmark dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _config_from(kubeconfig: Path) -> client.Configuration:
    from kubernetes import config

    configuration = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def utcnow() -> datetime:
    return datetime.now(UTC)
