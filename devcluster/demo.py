"""`make demo`: the seed's incident, fixed live on a local control plane.

Four worker nodes (each a real network namespace): two widened to `1024 65000` the way the
ops notebook describes, one on kernel defaults with nothing reserved, one already compliant.
The operator runs as its ServiceAccount; one NodeSysctlPolicy is applied; the demo shows the
nodes converging and which Deployments were restarted and why, then how to poke at it. Only
host-network pods had a widened node's port range (a pod's own network namespace starts from
the kernel defaults), so on worker-1 the host-network `edge-proxy` is restarted and the
pod-network `checkout` beside it is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from nodesysctl import GROUP, PLURAL, VERSION
from nodesysctl.agent.contract import COMPOSED_PERSIST_FILE
from nodesysctl.agent.persist import render_settled
from nodesysctl.planning import NodeFacts
from nodesysctl.ports import PortRange

from . import install
from .binaries import BinariesNotFoundError, find_binaries
from .cluster import DevCluster
from .controlplane import ControlPlane
from .nodes import SimulatedNode
from .realnode import RealNode
from .waiting import wait_for
from .workloads import deployment

POLICY = "workers-nodeport-safe"
RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
APP_NAMESPACE = "shop"
WORKER = {"node-role.kubernetes.io/worker": ""}
POLICY_YAML = f"""\
apiVersion: {GROUP}/{VERSION}
kind: NodeSysctlPolicy
metadata:
  name: {POLICY}
spec:
  nodeSelector:
    matchLabels: {{node-role.kubernetes.io/worker: ""}}
  ports:
    ephemeralRange: {{min: 32768, max: 60999}}   # the kernel's default
    nodePortRange: {{min: 30000, max: 32767}}    # the Service NodePort range
    protectedPorts: [10250]                      # the kubelet
  remediation: {{mode: Enforce, narrowRange: true, reservePorts: true, persist: true}}
  rollout: {{maxConcurrent: 2, maxFailedNodes: 1, recheckInterval: 30m}}
  restart:
    selector: {{matchLabels: {{nodesysctl.io/restart: "true"}}}}
    namespaces: [{APP_NAMESPACE}]
"""
# (name, boot sysctls, why it is interesting)
NODES: list[tuple[str, dict[str, str], str]] = [
    ("worker-1", {RANGE: "1024 65000"}, "widened by a tuning script (the notebook's incident)"),
    ("worker-2", {RANGE: "1024 65000"}, "widened the same way"),
    ("worker-3", {}, "kernel defaults, but the NodePort range is not reserved"),
    ("worker-4", {RESERVED: "10250,30000-32767"}, "already compliant"),
]
# (deployment, node, restart label?, hostNetwork?, what should happen)
APPS: list[tuple[str, str, bool, bool, str]] = [
    ("edge-proxy", "worker-1", True, True,
     "host network, selected, on a remediated node: it had the widened range; restarted once"),
    ("checkout", "worker-1", True, False,
     "same node, pod network: its own network namespace never had the node's range; left alone"),
    ("batch-report", "worker-2", False, True,
     "host network on a remediated node but not selected (no restart label): left alone"),
    ("catalog", "worker-4", True, True,
     "host network and selected, but its node was already compliant: left alone"),
]  # fmt: skip
RESTARTED = "edge-proxy"


def say(message: str = "") -> None:
    print(message, flush=True)


def step(message: str) -> None:
    say(f"\n==> {message}")


def stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


class Demo:
    def __init__(self, cluster: DevCluster, workdir: Path, *, real_nodes: bool = False) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.real_nodes = real_nodes
        self.core: Any = client.CoreV1Api(cluster.api)
        self.apps: Any = client.AppsV1Api(cluster.api)
        self.custom: Any = client.CustomObjectsApi(cluster.api)
        self.nodes: dict[str, SimulatedNode | RealNode] = {}

    # --- set-up --------------------------------------------------------------------------

    def add_nodes(self) -> None:
        if self.real_nodes:
            step("Real worker nodes: kubelet, containerd and runc, each in its own namespaces")
        else:
            step("Simulated worker nodes, each a real Linux network namespace")
        for name, sysctls, why in NODES:
            add = self.cluster.add_real_node if self.real_nodes else self.cluster.add_node
            node = add(name, WORKER, sysctls=sysctls)
            self.nodes[name] = node
            say(f"    {name:9} ip_local_port_range={self.range_of(node):12} ({why})")
        # worker-4 has the persistence file a previous run would have left, so it is compliant.
        persisted = render_settled(
            [POLICY], PortRange(32768, 60999), (PortRange(10250, 10250), PortRange(30000, 32767))
        )
        host_dir = self.nodes["worker-4"].host_path("/etc/sysctl.d")
        (host_dir / COMPOSED_PERSIST_FILE).write_text(persisted)

    def install(self) -> subprocess.Popen[bytes]:
        step(
            "Installing the CRD, the operator's RBAC (manifests/overlays/default) and the operator"
        )
        self.cluster.install_crds(install.REPO / "crds")
        self.cluster.create_namespace(
            install.JOB_NAMESPACE, {"pod-security.kubernetes.io/enforce": "privileged"}
        )
        docs = install.operator_rbac_documents(self.cluster)
        install.apply_documents(self.cluster, docs, self.workdir / "rbac.yaml")
        kubeconfig = install.service_account_kubeconfig(
            self.cluster, self.workdir / "operator.kubeconfig"
        )
        log = self.workdir / "operator.log"
        # Real nodes run the agent from the locally built image (they have no registry).
        extra = ["--agent-image", self.cluster.images.nodesysctl.ref] if self.real_nodes else []
        operator = install.start_operator(kubeconfig, log, *extra)
        say(f"    operator running as system:serviceaccount:{install.OPERATOR_NAMESPACE}:"
            f"{install.SERVICE_ACCOUNT} (log: {log})")  # fmt: skip
        return operator

    def deploy_apps(self) -> None:
        step(f"Deployments in namespace {APP_NAMESPACE}")
        self.cluster.create_namespace(APP_NAMESPACE)
        for name, node, restart, host, _why in APPS:
            labels = {"nodesysctl.io/restart": "true"} if restart else {}
            body = deployment(name, node, labels, host_network=host)
            self.apps.create_namespaced_deployment(APP_NAMESPACE, body)
            network = "host network" if host else "pod network"
            label = "yes" if restart else "no"
            say(f"    {name:13} on {node}  {network:12}  restart label: {label}")
        for name, *_ in APPS:
            wait_for(functools.partial(self.available, name), timeout=60, what=f"{name} ready")

    def apply_policy(self) -> None:
        step("Applying the NodeSysctlPolicy")
        path = self.workdir / "policy.yaml"
        path.write_text(POLICY_YAML)
        say("    " + POLICY_YAML.replace("\n", "\n    ").rstrip())
        self.cluster.kubectl("apply", "-f", str(path))

    # --- watching ------------------------------------------------------------------------

    def watch(self, timeout: float) -> dict[str, Any]:
        step("Watching the rollout (live)")
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        last_counts = ""
        while time.monotonic() < deadline:
            for name, node in self.nodes.items():
                result = self.result_of(name)
                line = f"{self.range_of(node):12} {result.status.value if result else 'waiting'}"
                if seen.get(name) != line:
                    detail = f"  {result.message}" if result and result.message else ""
                    say(f"    {stamp()}  {name:9} {line}{detail}")
                    seen[name] = line
            policy = self.policy()
            status = policy.get("status") or {}
            counts = (
                f"{status.get('compliant', 0)}/{status.get('nodes', 0)} compliant, "
                f"{status.get('drifted', 0)} drifted, {status.get('failed', 0)} failed, "
                f"{status.get('pending', 0)} pending"
            )
            if counts != last_counts:
                say(f"    {stamp()}  policy    {counts}")
                last_counts = counts
            if self.ready(policy) and "lastRestart" in status:
                return policy
            time.sleep(1.0)
        raise TimeoutError(f"the policy did not converge within {timeout:.0f}s")

    # --- the story, told -----------------------------------------------------------------

    def summarize(self, policy: dict[str, Any], kubeconfig: Path) -> bool:
        step("Summary")
        ok = True
        for name, node in self.nodes.items():
            result = self.result_of(name)
            state = result.status.value if result else "unknown"
            say(f"    {name:9} now {self.range_of(node):12} reserved={node.get_sysctl(RESERVED)}"
                f"  -> {state}")  # fmt: skip
        restart = policy["status"]["lastRestart"]
        say(f"\n    Restart wave {restart['wave']} at {restart['at']}:")
        for name, _node, _restart, _host, why in APPS:
            events = self.events(name, "Restarted")
            sets = self.replica_sets(name)
            restarted = f"Deployment/{APP_NAMESPACE}/{name}" in restart["workloads"]
            verdict = "RESTARTED" if restarted else "untouched"
            say(f"    {name:13} {verdict:9} ({sets} ReplicaSets) - {why}")
            for event in events:
                say(f"                  event: {event['reason']}: {event['message']}")
            expected = name == RESTARTED
            ok &= restarted == expected and sets == (2 if expected else 1)
        ok &= all((r := self.result_of(n)) is not None and r.status.value in (
            "Remediated", "Compliant") for n in self.nodes)  # fmt: skip
        for event in self.events(POLICY, "RestartWaveComplete", namespace="default"):
            say(f"\n    policy event: {event['message']}")

        kubectl = str(self.cluster.control_plane.binaries.kubectl)
        say("\n    $ kubectl get nsp")
        say("    " + self.cluster.kubectl("get", "nsp").stdout.rstrip().replace("\n", "\n    "))
        say("\n    $ nodesysctl status")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        status = subprocess.run(
            [sys.executable, "-m", "nodesysctl.cli", "status"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        say("    " + status.stdout.rstrip().replace("\n", "\n    "))
        say("\n    $ nodesysctl status --restarts")
        restarts = subprocess.run(
            [sys.executable, "-m", "nodesysctl.cli", "status", "--restarts"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        say("    " + restarts.stdout.rstrip().replace("\n", "\n    "))
        step("Poke at it yourself (while the demo runs)")
        say(f"    export KUBECONFIG={kubeconfig}")
        say(f"    {kubectl} get nsp {POLICY} -o yaml")
        say(f"    {kubectl} describe node worker-1")
        say(f"    {kubectl} -n {APP_NAMESPACE} rollout history deployment/{RESTARTED}")
        say(f"    {sys.executable} -m nodesysctl.cli status")
        return ok

    # --- small readers -------------------------------------------------------------------

    @staticmethod
    def range_of(node: SimulatedNode | RealNode) -> str:
        return node.get_sysctl(RANGE).replace("\t", "-")

    def result_of(self, name: str) -> Any:
        body = json.loads(self.core.read_node(name, _preload_content=False).data)
        return NodeFacts.from_body(body).results.get(POLICY)

    def policy(self) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, POLICY)
        return body

    @staticmethod
    def ready(policy: dict[str, Any]) -> bool:
        conditions = (policy.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def available(self, name: str) -> bool:
        dep = json.loads(
            self.apps.read_namespaced_deployment(name, APP_NAMESPACE, _preload_content=False).data
        )
        return bool((dep.get("status") or {}).get("readyReplicas") == 1)

    def replica_sets(self, name: str) -> int:
        sets = json.loads(
            self.apps.list_namespaced_replica_set(
                APP_NAMESPACE, label_selector=f"app={name}", _preload_content=False
            ).data
        )
        return len(sets["items"])  # fmt: skip

    def events(
        self, name: str, reason: str, namespace: str = APP_NAMESPACE
    ) -> list[dict[str, Any]]:
        events = json.loads(
            self.core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.name={name},reason={reason}",
                _preload_content=False,
            ).data
        )
        return list(events["items"])  # fmt: skip


@contextlib.contextmanager
def interrupts_as_exit() -> Iterator[None]:
    """Ctrl-C and SIGTERM end the demo through the normal clean-up path."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--non-interactive", action="store_true",
                        help="do not wait for Ctrl-C at the end (CI)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--real-nodes", action="store_true",
                        help="real kubelets, containerd and runc instead of simulated nodes "
                        "(builds the images first: make image)")  # fmt: skip
    args = parser.parse_args(argv)
    interactive = not args.non_interactive and sys.stdin.isatty()
    if os.geteuid() != 0:
        say("The demo needs root: each simulated node is a Linux network namespace.")
        return 2
    try:
        binaries = find_binaries()
    except BinariesNotFoundError as exc:
        say(f"{exc}\nRun `make controlplane` (make demo does it for you).")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="nodesysctl-demo-"))
    step("Starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler)")
    cluster = DevCluster(ControlPlane(binaries=binaries))
    operator: subprocess.Popen[bytes] | None = None
    ok = False
    with interrupts_as_exit():
        try:
            cluster.start()
            say(f"    API server at {cluster.server}")
            demo = Demo(cluster, workdir, real_nodes=args.real_nodes)
            demo.add_nodes()
            operator = demo.install()
            demo.deploy_apps()
            demo.apply_policy()
            policy = demo.watch(args.timeout)
            ok = demo.summarize(policy, cluster.kubeconfig)
            say("\nDemo " + ("succeeded." if ok else "FAILED: see the summary above."))
            if interactive:
                say("\nThe cluster keeps running. Press Ctrl-C to stop and clean up.")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            say("\nStopping.")
        except Exception as exc:
            say(f"\nDemo FAILED: {exc}")
            log = workdir / "operator.log"
            if log.exists():
                say("---- operator log (tail) ----\n" + log.read_text()[-4000:])
        finally:
            if operator is not None:
                operator.terminate()
                operator.wait(timeout=20)
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            say("Cleaned up: no processes, namespaces or temporary files left.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
