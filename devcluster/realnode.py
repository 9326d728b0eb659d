"""Real nodes: a real kubelet, containerd and runc per node, each in its own namespaces.

A :class:`RealNode` is a network namespace (its own ``ip_local_port_range``, like a simulated
node's) plus a mount and a PID namespace with ``tini`` as PID 1, running
(``realnode_init.sh``) a relay to the API server, containerd with runc and a CNI bridge, and
the kubelet with a ``system:node:<name>`` client certificate. The recipe and its pitfalls are
measured in the design note on real nodes; docs/controlplane.md ("Real nodes") has the short
version.

Network: a veth pair per node, ``10.250.x.1`` (this machine) <-> ``10.250.x.2`` (the node,
its InternalIP), a /30 of its own. Nothing in the node has a default route; the node talks to
the API server only through a relay inside its own namespace at the ``kubernetes`` Service's
ClusterIP (``10.0.0.1:443``, already in the serving certificate), which goes through a unix
socket to the API server on 127.0.0.1. So a pod on the node finds the API server exactly where
the kubelet's ``KUBERNETES_SERVICE_HOST``/``PORT`` say it is. The API server reaches the kubelet
at the node's address for logs and exec. The API server is never bound to anything but loopback.

The machine's kernel settings are never changed: the node's ``/etc/sysctl.d`` is a directory of
its own, the kubelet's kernel tuning writes files bind-mounted over those ``/proc/sys`` entries
in the node's mount namespace, and the node's boot id is such a file too (a reboot changes it).

Stopping a node kills its PID namespace (one signal) and removes the cgroups runc made, the
netns (and with it the veth pair) and its directory. If the Python process is SIGKILLed, the
node dies with it (``PR_SET_PDEATHSIG``) and :func:`reap_real_nodes` (called by the dead
cluster reaper) removes the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .certs import node_client_cert
from .images import Images
from .nodes import KERNEL_DEFAULTS, NodeError, netns_get_sysctl, netns_set_sysctl
from .waiting import WaitTimeoutError, wait_for

if TYPE_CHECKING:
    from .controlplane import ControlPlane

log = logging.getLogger(__name__)

INIT_SCRIPT = Path(__file__).with_name("realnode_init.sh")
REAL_NETNS_PREFIX = "nsr-"
VETH_PREFIX = "nsrv"
NODE_SUBNETS = ipaddress.ip_network("10.250.0.0/16")  # a /30 per node: host .1, node .2
POD_SUBNETS = ipaddress.ip_network("10.251.0.0/16")  # a /24 per node (inside its netns only)
MAX_SLOTS = 250
# Where slots are claimed (one file per node, across all dev clusters on this machine).
SLOTS_DIR = Path("/run/nodesysctl-devcluster/slots")
# The kubernetes Service's ClusterIP (the first address of SERVICE_CLUSTER_IP_RANGE).
RELAY_ADDRESS = "10.0.0.1"
# The kubelet's kernel tuning (pkg/kubelet/cm: setupKernelTunables), with the values it wants.
KUBELET_TUNABLES = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
CGROUP_ROOT = Path("/sys/fs/cgroup")
# What a reboot applies from the node's /etc/sysctl.d: its own keys, never the machine's.
SYSCTL_D_PREFIXES = ("/net/ipv4/ip_local_port_range", "/net/ipv4/ip_local_reserved_ports")
CONTAINERD_NAMESPACE = "k8s.io"
REAL_NODE_LABEL = "devcluster.nodesysctl.io/real-node"


def _run(argv: list[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a node
# started from a short-lived thread (DevCluster users start nodes in parallel) would be killed
# as soon as that thread finished. Every node process is therefore forked by this one thread,
# which lives as long as the Python process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realnode-spawner")


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    def spawn() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    return _SPAWNER.submit(spawn).result()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def realnode_netns_name(cluster_tag: str, node_name: str) -> str:
    digest = hashlib.sha256(f"{cluster_tag}/{node_name}".encode()).hexdigest()[:10]
    return REAL_NETNS_PREFIX + digest


# ----------------------------------------------------------------------------------- slots
def claim_slot(owner: Path) -> int:
    """A node number free on this machine (its /30 and pod /24), claimed by a file naming the
    owning cluster directory; released by :func:`release_slot` or the reaper."""
    SLOTS_DIR.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        path = SLOTS_DIR / str(slot)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(f"{os.getpid()} {owner}\n")
        return slot
    raise NodeError(f"all {MAX_SLOTS} real-node slots in {SLOTS_DIR} are taken")


def release_slot(slot: int) -> None:
    (SLOTS_DIR / str(slot)).unlink(missing_ok=True)


def _slot_addresses(slot: int) -> tuple[str, str, str]:
    """(host end, node address, pod subnet) of a slot."""
    base = NODE_SUBNETS.network_address + 4 * slot
    pods = ipaddress.ip_network(f"{POD_SUBNETS.network_address + 256 * slot}/24")
    return str(base + 1), str(base + 2), str(pods)


# ----------------------------------------------------------------------------------- cleanup
def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _nopids_in_namespace(pidns: str) -> bool:
    return not pids_in_namespace(pidns)


def pids_in_namespace(pidns: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_namespace(int(entry.name)) == pidns:
            found.append(int(entry.name))
    return found


def remove_container_cgroups(runc_root: Path) -> list[Path]:
    """rmdir the cgroups runc made for the node's containers (``/<ctrl>/k8s.io/<id>``,
    ids from runc's state directory), once their processes are gone."""
    removed: list[Path] = []
    ids = (
        [p.name for p in (runc_root / CONTAINERD_NAMESPACE).glob("*")] if runc_root.exists() else []
    )
    for container in ids:
        for controller in CGROUP_ROOT.glob("*"):
            path = controller / CONTAINERD_NAMESPACE / container
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
                    removed.append(path)
    return removed


def reap_real_nodes(cluster_dir: Path) -> None:
    """What the real nodes of a dead dev cluster left: processes (if any survived), cgroups,
    slots. Its netns are in the cluster's netns list, removed by the caller."""
    for node_dir in sorted((cluster_dir / "realnodes").glob("*")):
        with contextlib.suppress(OSError, WaitTimeoutError):
            pidns = (node_dir / "pidns").read_text().strip()
            # A dead namespace's number may be reused: only processes that name the node's
            # directory on their command line (all of a node's do) are the node's.
            for pid in pids_in_namespace(pidns):
                if str(node_dir).encode() in _cmdline(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            wait_for(
                functools.partial(_nopids_in_namespace, pidns),
                timeout=10,
                what="node processes gone",
            )
        remove_container_cgroups(node_dir / "runc")
    for slot_file in SLOTS_DIR.glob("*") if SLOTS_DIR.exists() else []:
        with contextlib.suppress(OSError, ValueError):
            owner_pid, owner = slot_file.read_text().split()
            if Path(owner) == cluster_dir or not _alive(int(owner_pid)):
                slot_file.unlink()


# ----------------------------------------------------------------------------------- the node
class RealNode:
    """One real node. Create it with :meth:`DevCluster.add_real_node`, not directly."""

    def __init__(
        self,
        name: str,
        *,
        control_plane: ControlPlane,
        directory: Path,
        netns: str,
        images: Images,
        labels: Mapping[str, str] | None = None,
        sysctls: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        self.name = name
        self.control_plane = control_plane
        self.dir = directory
        self.netns = netns
        self.images = images
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        self.boot_sysctls = {**KERNEL_DEFAULTS, **(sysctls or {})}
        self.slot: int | None = None
        self.host_ip = self.ip = self.pod_subnet = ""
        self.veth = VETH_PREFIX + netns.removeprefix(REAL_NETNS_PREFIX)[:8]
        self.boot_id = str(uuid.uuid4())
        self._process: subprocess.Popen[bytes] | None = None
        self._relay: subprocess.Popen[bytes] | None = None
        self._pidns: str | None = None
        self._netns_made = False

    def __repr__(self) -> str:
        return f"<RealNode {self.name} ({self.ip} in netns {self.netns})>"

    # ----------------------------------------------------------------- paths
    @property
    def sysctl_d(self) -> Path:
        """The node's /etc/sysctl.d (bind-mounted there in its mount namespace)."""
        return self.dir / "etc" / "sysctl.d"

    def host_path(self, path: str) -> Path:
        """Where the node's ``path`` is on this machine, for the directories the node has of
        its own (``/etc/sysctl.d``); anything else is the machine's own path."""
        clean = "/" + path.strip("/")
        if clean == "/etc/sysctl.d" or clean.startswith("/etc/sysctl.d/"):
            return self.sysctl_d / clean.removeprefix("/etc/sysctl.d").lstrip("/")
        return Path(clean)

    def sysctl_conf_files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.sysctl_d.glob("*")) if p.is_file()}

    def log(self, component: str) -> str:
        """``kubelet``, ``containerd``, ``init``, ``relay`` or ``import``: that log's text."""
        path = self.dir / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ----------------------------------------------------------------- sysctls
    def set_sysctl(self, key: str, value: str) -> None:
        netns_set_sysctl(self.netns, key, value)

    def get_sysctl(self, key: str) -> str:
        return netns_get_sysctl(self.netns, key)

    # ----------------------------------------------------------------- lifecycle
    def create(self) -> None:
        """The machine (netns, veth, files, certificates) and the node's processes."""
        self.slot = claim_slot(self.control_plane.dir)
        self.host_ip, self.ip, self.pod_subnet = _slot_addresses(self.slot)
        for sub in ("etc/sysctl.d", "logs", "proc-sys", "containerd", "cni", "kubelet", "pki"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._make_network()
        for key, value in self.boot_sysctls.items():
            self.set_sysctl(key, value)
        self._write_files()
        self.start()

    def _make_network(self) -> None:
        _run(["ip", "netns", "add", self.netns])
        self._netns_made = True
        ns = ["ip", "-n", self.netns]
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
              "netns", self.netns])  # fmt: skip
        _run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth])
        _run(["ip", "link", "set", self.veth, "up"])
        _run([*ns, "link", "set", "lo", "up"])
        _run([*ns, "addr", "add", f"{RELAY_ADDRESS}/32", "dev", "lo"])
        _run([*ns, "addr", "add", f"{self.ip}/30", "dev", "eth0"])
        _run([*ns, "link", "set", "eth0", "up"])

    def _write_files(self) -> None:
        cp = self.control_plane
        pki = cp.pki
        cert = node_client_cert(pki, self.name, self.dir / "pki")
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devcluster", "cluster": {
                "server": f"https://{RELAY_ADDRESS}:443",
                "certificate-authority": str(pki.ca.cert)}}],
            "users": [{"name": self.name, "user": {
                "client-certificate": str(cert.cert), "client-key": str(cert.key)}}],
            "contexts": [{"name": self.name, "context": {
                "cluster": "devcluster", "user": self.name}}],
            "current-context": self.name,
        }  # fmt: skip
        (self.dir / "kubelet.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        for key, value in KUBELET_TUNABLES.items():
            (self.dir / "proc-sys" / key).write_text(value + "\n")
        (self.dir / "boot_id").write_text(self.boot_id + "\n")
        self._write_containerd_config()
        self._write_cni_config()
        self._write_kubelet_config()
        images = " ".join(
            f"{image.archive}={','.join((image.ref, *image.aliases))}"
            for image in self.images.all()
        )
        env = {
            "KUBELET": str(cp.binaries.kubelet),
            "CTR": shutil.which("ctr") or "ctr",
            "IMAGES": images,
            "RELAY_ADDRESS": RELAY_ADDRESS,
            "KUBELET_ARGS": " ".join(self._kubelet_args()),
        }
        (self.dir / "node.env").write_text(
            "".join(f"{k}={_shell_quote(v)}\n" for k, v in env.items())
        )

    def _write_containerd_config(self) -> None:
        d = self.dir
        runtime = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc'
        (d / "containerd" / "config.toml").write_text(
            f"""version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images.pause.ref}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower a container's oom_score_adj.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{runtime}]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"""
        )

    def _write_cni_config(self) -> None:
        conflist = {
            "cniVersion": "0.4.0",
            "name": "devcluster",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        (self.dir / "cni" / "10-devcluster.conflist").write_text(json.dumps(conflist, indent=2))

    def _write_kubelet_config(self) -> None:
        d = self.dir
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.control_plane.pki.ca.cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{d}/containerd.sock",
            "imageServiceEndpoint": f"unix://{d}/containerd.sock",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failCgroupV1": False,
            "failSwapOn": False,
            "podLogsDir": f"{d}/pod-logs",
            "volumePluginDir": f"{d}/volume-plugins",
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerWithTaints": self.taints or None,
            # Periodic pod resync (default 1m): pods come back sooner after a reboot.
            "syncFrequency": "10s",
            "protectKernelDefaults": False,
            "resolvConf": "/etc/resolv.conf",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
        }
        (d / "kubelet-config.yaml").write_text(
            yaml.safe_dump({k: v for k, v in config.items() if v is not None})
        )

    def _kubelet_args(self) -> list[str]:
        d = self.dir
        return [
            f"--config={d}/kubelet-config.yaml",
            f"--kubeconfig={d}/kubelet.kubeconfig",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ip}",
            f"--root-dir={d}/kubelet",
            f"--cert-dir={d}/pki",
            "--v=1",
        ]

    def start(self) -> None:
        """Start the node's processes (after :meth:`create`, or after :meth:`stop_processes`:
        a reboot). Returns once containerd has the images and the kubelet runs."""
        (self.dir / "started").unlink(missing_ok=True)
        for state in ("containerd/state", "runc"):  # /run on a real machine: gone at boot
            shutil.rmtree(self.dir / state, ignore_errors=True)
        self._start_relay()
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}",
            "unshare", "--mount", "--propagation", "slave", "--pid", "--fork", "--mount-proc",
            "--kill-child", shutil.which("tini") or "tini", "--",
            "bash", str(INIT_SCRIPT), str(self.dir),
        ]  # fmt: skip
        self._process = _spawn(argv, self.dir / "logs" / "init.log")

        def started() -> bool:
            if self._process is not None and self._process.poll() is not None:
                raise NodeError(
                    f"node {self.name} exited ({self._process.returncode}):\n"
                    f"{self.log('init')[-3000:]}\n{self.log('containerd')[-2000:]}"
                )
            return (self.dir / "started").exists()

        wait_for(started, timeout=120, what=f"node {self.name} started", fatal=(NodeError,))
        self._pidns = self._find_pidns()
        if self._pidns:
            (self.dir / "pidns").write_text(self._pidns + "\n")

    def _find_pidns(self) -> str | None:
        """The node's PID namespace: that of unshare's child (tini)."""
        if self._process is None:
            return None
        own = _pid_namespace(os.getpid())
        for pid in _children(self._process.pid):
            for candidate in (pid, *_children(pid)):
                ns = _pid_namespace(candidate)
                if ns and ns != own:
                    return ns
        return None

    def _start_relay(self) -> None:
        sock = self.dir / "apiserver.sock"
        sock.unlink(missing_ok=True)
        port = self.control_plane.ports.apiserver
        self._relay = _spawn(
            ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{port}"],
            self.dir / "logs" / "relay-host.log",
        )
        wait_for(sock.exists, timeout=10, what=f"relay socket of {self.name}")

    def stop_processes(self) -> None:
        """Kill the node (its whole PID namespace) and the relay; remove its containers'
        cgroups. The netns, the Node object and the node's disk (its directory) stay."""
        if self._process is not None and self._process.poll() is None:
            # unshare --fork ignores SIGTERM; killed, its --kill-child SIGKILLs tini, PID 1
            # of the node, and the kernel then kills everything in the PID namespace.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None
        if self._pidns:
            pidns = self._pidns
            for pid in pids_in_namespace(pidns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_for(
                functools.partial(_nopids_in_namespace, pidns),
                timeout=30,
                what=f"node {self.name}'s processes gone",
            )
        if self._relay is not None and self._relay.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._relay.pid, signal.SIGKILL)  # with its per-connection children
            self._relay.wait()
        self._relay = None
        remove_container_cgroups(self.dir / "runc")

    def destroy(self) -> None:
        """Stop the processes and remove the netns, the slot and the directory (idempotent)."""
        self.stop_processes()
        if self._netns_made:
            _run(["ip", "netns", "delete", self.netns], check=False)
            self._netns_made = False
        if self.slot is not None:
            release_slot(self.slot)
            self.slot = None
        if os.environ.get("NODESYSCTL_DEVCLUSTER_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- reboot
    def reboot(self, *, apply_sysctl_d: bool = True) -> str:
        """Stop the node, reset its namespace's sysctls to the kernel defaults, apply its
        /etc/sysctl.d with the real ``systemd-sysctl`` (only the two ``net.ipv4.ip_local_*``
        keys: anything else would be the machine's), and start it with a new boot id.
        Returns the new boot id; the Node reports it once the kubelet is back."""
        self.stop_processes()
        for key, value in KERNEL_DEFAULTS.items():
            self.set_sysctl(key, value)
        if apply_sysctl_d:
            self.apply_sysctl_d()
        self.boot_id = str(uuid.uuid4())
        (self.dir / "boot_id").write_text(self.boot_id + "\n")
        self.start()
        return self.boot_id

    def apply_sysctl_d(self) -> None:
        """``systemd-sysctl`` in the node's network namespace, with its /etc/sysctl.d
        mounted, as at boot, limited to the ephemeral range and the reserved ports. (Not
        ``--prefix=/net/ipv4/ip_local_``: systemd matches a prefix by whole path components,
        so that one applies nothing.)"""
        systemd_sysctl = next(
            (p for p in ("/usr/lib/systemd/systemd-sysctl", "/lib/systemd/systemd-sysctl")
             if os.access(p, os.X_OK)),
            "systemd-sysctl",
        )  # fmt: skip
        _run(["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
              "--propagation", "slave", "sh", "-c",
              'mount --bind "$1" /etc/sysctl.d && exec "$2" "--prefix=$3" "--prefix=$4"',
              "sh", str(self.sysctl_d), systemd_sysctl, *SYSCTL_D_PREFIXES])  # fmt: skip

    # ----------------------------------------------------------------- the Node object
    def wait_registered_and_label(self, api: Any, timeout: float = 120) -> None:
        """The kubelet registers the Node itself; labels go on as admin (NodeRestriction
        lets a kubelet set only a few label prefixes on itself)."""
        core: Any = client.CoreV1Api(api)

        def registered() -> bool:
            try:
                core.read_node(self.name)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        wait_for(registered, timeout=timeout, what=f"real node {self.name} registered")
        labels = {**self.labels, REAL_NODE_LABEL: "true"}
        core.patch_node(self.name, {"metadata": {"labels": labels}})

    def set_labels(self, api: Any, labels: Mapping[str, str | None]) -> None:
        for key, value in labels.items():
            if value is None:
                self.labels.pop(key, None)
            else:
                self.labels[key] = value
        client.CoreV1Api(api).patch_node(self.name, {"metadata": {"labels": dict(labels)}})


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
