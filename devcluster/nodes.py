"""The machine side of a simulated node: a network namespace (or a fake /proc/sys) and a host root.

Each :class:`SimulatedNode` stands for one Node object. Its sysctls live either in a real
Linux network namespace ``nsc-<hash>`` (``net.*`` sysctls are per network namespace, so each
node has its own ``net.ipv4.ip_local_port_range``), or, for scale tests, in a directory tree
``<host root>/proc/sys`` that the agent is pointed at. The host root stands in for the node's
``/``: hostPath volumes of pods on the node are mapped below it.

The Kubernetes side (the Node object, its Lease, its pods) is the simulated kubelet's job
(:mod:`devcluster.kubelet`); the methods here that touch the Node object go through
the kubelet the node is registered with.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kubelet import SimulatedKubelet

# A fresh network namespace starts with the kernel defaults, whatever the host has.
KERNEL_DEFAULTS = {
    "net.ipv4.ip_local_port_range": "32768\t60999",
    "net.ipv4.ip_local_reserved_ports": "",
}
NETNS_PREFIX = "nsc-"
# Every node's InternalIP (and a pod's hostIP): this machine, so whatever the API server tries
# to reach on a "node" stays here.
NODE_IP = "127.0.0.1"
_SOCKET_TABLE_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    "   uid  timeout inode\n"
)


class NodeError(RuntimeError):
    pass


def sysctl_path(key: str) -> str:
    """``net.ipv4.ip_local_port_range`` -> ``net/ipv4/ip_local_port_range``."""
    if not key or key.startswith((".", "/")) or ".." in key or "/" in key:
        raise ValueError(f"not a sysctl name: {key!r}")
    return key.replace(".", "/")


def kernel_format(key: str, value: str) -> str:
    """What the kernel prints back: the range's two numbers are separated by a TAB."""
    if key == "net.ipv4.ip_local_port_range":
        return "\t".join(value.split())
    return value.strip()


def _run(argv: list[str], *, input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def netns_set_sysctl(netns: str, key: str, value: str) -> None:
    """Write a sysctl inside a network namespace (the kernel checks and formats it)."""
    _run(
        ["nsenter", f"--net=/run/netns/{netns}", "sh", "-c",
         'printf "%s\\n" "$1" > "/proc/sys/$2"', "sh", value, sysctl_path(key)],
    )  # fmt: skip


def netns_get_sysctl(netns: str, key: str) -> str:
    """A sysctl as the kernel prints it inside a network namespace, without the newline."""
    out = _run(["nsenter", f"--net=/run/netns/{netns}", "cat", f"/proc/sys/{sysctl_path(key)}"])
    return out.rstrip("\n")


def netns_name(cluster_tag: str, node_name: str) -> str:
    digest = hashlib.sha256(f"{cluster_tag}/{node_name}".encode()).hexdigest()[:10]
    return NETNS_PREFIX + digest


class SimulatedNode:
    """One simulated machine. Create it with :meth:`DevCluster.add_node`, not directly."""

    def __init__(
        self,
        name: str,
        *,
        root: Path,
        labels: Mapping[str, str] | None = None,
        netns: str | None = None,
        sysctls: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        self.name = name
        self.labels = dict(labels or {})
        self.netns = netns
        self.host_root = root
        self.capacity = dict(capacity or {"cpu": "4", "memory": "8Gi", "pods": "110"})
        self.taints = list(taints or [])
        # The values the node "boots" with; reboot() restores them.
        self.boot_sysctls = {**KERNEL_DEFAULTS, **(sysctls or {})}
        self.boot_id = str(uuid.uuid4())
        self.kubelet: SimulatedKubelet | None = None
        self._created = False

    def __repr__(self) -> str:
        where = f"netns {self.netns}" if self.netns else f"fake tree {self.proc_sys}"
        return f"<SimulatedNode {self.name} ({where})>"

    # ----------------------------------------------------------------- machine lifecycle
    @property
    def proc_sys(self) -> Path:
        """Where the agent finds this node's /proc/sys (the real one inside the netns)."""
        return Path("/proc/sys") if self.netns else self.host_root / "proc" / "sys"

    def create(self) -> None:
        """Make the host root (and the netns) and apply :attr:`boot_sysctls`."""
        (self.host_root / "etc" / "sysctl.d").mkdir(parents=True, exist_ok=True)
        if self.netns:
            _run(["ip", "netns", "add", self.netns])
            self._created = True
            _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        else:
            # An empty socket table per protocol: the kernel's header line and no sockets.
            net = self.host_root / "proc" / "net"
            net.mkdir(parents=True, exist_ok=True)
            for proto in ("tcp", "tcp6", "udp", "udp6"):
                (net / proto).write_text(_SOCKET_TABLE_HEADER)
            self._created = True
        for key, value in self.boot_sysctls.items():
            self.set_sysctl(key, value)

    def destroy(self) -> None:
        """Remove the netns and the host root (idempotent)."""
        if self.netns and self._created:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        self._created = False
        shutil.rmtree(self.host_root, ignore_errors=True)

    # ----------------------------------------------------------------- sysctls
    def set_sysctl(self, key: str, value: str) -> None:
        """Write a sysctl of this node, e.g. ``set_sysctl("net.ipv4.ip_local_port_range",
        "1024 65000")``. In a netns this is the kernel's own check and format."""
        if self.netns:
            netns_set_sysctl(self.netns, key, value)
        else:
            path = self.proc_sys / sysctl_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(kernel_format(key, value) + "\n")

    def get_sysctl(self, key: str) -> str:
        """The value as the kernel prints it, without the trailing newline."""
        if self.netns:
            return netns_get_sysctl(self.netns, key)
        return (self.proc_sys / sysctl_path(key)).read_text().rstrip("\n")

    def sysctl_conf_files(self) -> dict[str, str]:
        """The files in the node's /etc/sysctl.d (what a persisting agent wrote)."""
        directory = self.host_root / "etc" / "sysctl.d"
        return {p.name: p.read_text() for p in sorted(directory.glob("*")) if p.is_file()}

    def host_path(self, path: str) -> Path:
        """Where a hostPath volume's ``path`` lives for this node.

        Kernel state under /proc and /sys is the real thing for a netns node (the process runs
        inside the netns, so /proc/sys/net is the node's own); everything else, and /proc for
        a node without a netns, is below the node's host root.
        """
        clean = "/" + path.strip("/")
        if self.netns and (clean == "/proc" or clean.startswith(("/proc/", "/sys/"))):
            return Path(clean)
        return self.host_root / clean.lstrip("/")

    # ----------------------------------------------------------------- the Node object
    def _require_kubelet(self) -> SimulatedKubelet:
        if self.kubelet is None:
            raise NodeError(f"node {self.name} is not registered with a kubelet")
        return self.kubelet

    def reboot(self, sysctls: Mapping[str, str] | None = None) -> str:
        """Simulate a reboot: sysctls back to the boot values (updated with ``sysctls``), files
        in /etc/sysctl.d re-applied as systemd-sysctl would, and a new ``nodeInfo.bootID``.
        Returns the new boot ID."""
        if sysctls is not None:
            self.boot_sysctls = {**KERNEL_DEFAULTS, **sysctls}
        for key, value in self.boot_sysctls.items():
            self.set_sysctl(key, value)
        self.boot_id = str(uuid.uuid4())
        self._require_kubelet().report_boot_id(self)
        return self.boot_id

    def reboot_applying_sysctl_d(self) -> str:
        """Like :meth:`reboot`, then apply ``key = value`` lines of /etc/sysctl.d/*.conf in
        lexical order, as systemd-sysctl does at boot."""
        for content in self.sysctl_conf_files().values():
            for raw in content.splitlines():
                line = raw.strip()
                if not line or line.startswith(("#", ";")) or "=" not in line:
                    continue
                key, _, value = line.partition("=")
                self.boot_sysctls[key.strip().lstrip("-")] = value.strip()
        return self.reboot()

    def set_ready(self, ready: bool) -> None:
        """The kubelet reports the node Ready, or NotReady (Ready=False, KubeletNotReady)."""
        self._require_kubelet().report_ready(self.name, ready)

    def pause_heartbeats(self) -> None:
        """Its kubelet stops renewing the Lease and posting status, as a hung kubelet would;
        after the grace period the node lifecycle controller marks the node Unknown and
        taints it. Pods bound to it are still run (so cleanups do not hang)."""
        self._require_kubelet().pause_heartbeats(self.name)

    def resume_heartbeats(self) -> None:
        """Heartbeats again, at once; a node the controller marked Unknown is posted Ready."""
        self._require_kubelet().resume_heartbeats(self.name)

    def set_labels(self, labels: Mapping[str, str | None]) -> None:
        """Add/change labels; a value of None removes that label."""
        for key, value in labels.items():
            if value is None:
                self.labels.pop(key, None)
            else:
                self.labels[key] = value
        self._require_kubelet().patch_labels(self.name, dict(labels))

    def remove_labels(self, *keys: str) -> None:
        self.set_labels(dict.fromkeys(keys))

    def delete(self) -> None:
        """Delete the Node object and the machine (netns, host root)."""
        if self.kubelet is not None:
            self.kubelet.unregister(self.name, delete_node=True)
        self.destroy()
