"""``python -m devcluster``: run a dev cluster in the foreground (for the demo and
for poking at things by hand).

    python -m devcluster up --nodes 3 --label node-role.kubernetes.io/worker= \\
        --sysctl net.ipv4.ip_local_port_range="1024 65000"
    python -m devcluster up --real-nodes --nodes 2   # real kubelets, containerd and runc
    python -m devcluster where      # the binaries directory, or how to build it

``up`` prints the kubeconfig path and one line per node (its netns and host root), writes the
same to ``<cluster dir>/nodes.json``, and runs until Ctrl-C/SIGTERM, then cleans up.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path

from .binaries import BinariesNotFoundError, find_binaries
from .cluster import DevCluster
from .controlplane import ControlPlane


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _up(args: argparse.Namespace) -> int:
    labels = _pairs(args.label, "--label")
    sysctls = _pairs(args.sysctl, "--sysctl")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    directory = Path(args.dir).resolve() if args.dir else None
    cluster = DevCluster(ControlPlane(directory, keep_dir=args.keep))
    with cluster:
        names = [f"{args.prefix}{i}" for i in range(args.nodes)]
        table: dict[str, dict[str, str | None]]
        if args.real_nodes:
            real = [cluster.add_real_node(name, labels, sysctls=sysctls) for name in names]
            table = {n.name: {"netns": n.netns, "hostRoot": str(n.dir), "ip": n.ip} for n in real}
        else:
            nodes = [
                cluster.add_node(name, labels, netns=not args.no_netns, sysctls=sysctls)
                for name in names
            ]
            table = {
                n.name: {
                    "netns": n.netns,
                    "hostRoot": str(n.host_root),
                    "procSys": str(n.proc_sys),
                }
                for n in nodes
            }
        if args.kubeconfig_out:
            shutil.copy(cluster.kubeconfig, args.kubeconfig_out)
        (cluster.dir / "nodes.json").write_text(json.dumps(table, indent=2) + "\n")
        print(f"API server:  {cluster.server}")
        print(f"kubeconfig:  {args.kubeconfig_out or cluster.kubeconfig}")
        print(f"kubectl:     {cluster.control_plane.binaries.kubectl}")
        print(f"cluster dir: {cluster.dir} (logs in logs/, nodes in nodes.json)")
        for name, info in table.items():
            print(f"node {name}: netns={info['netns']} hostRoot={info['hostRoot']}")
        print("ready; Ctrl-C stops and cleans up", flush=True)
        stop.wait()
        print("stopping", flush=True)
    return 0


def _where(_: argparse.Namespace) -> int:
    try:
        print(find_binaries().directory)
    except BinariesNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run a control plane with simulated nodes until Ctrl-C")
    up.add_argument("--nodes", type=int, default=1, help="how many simulated nodes (default 1)")
    up.add_argument("--prefix", default="node-", help="node name prefix (default node-)")
    up.add_argument("--label", action="append", default=[], help="KEY=VALUE on every node")
    up.add_argument("--sysctl", action="append", default=[], help="KEY=VALUE at boot")
    up.add_argument("--no-netns", action="store_true", help="fake /proc/sys trees, no netns")
    up.add_argument("--real-nodes", action="store_true",
                    help="real nodes: kubelet, containerd, runc (make image)")  # fmt: skip
    up.add_argument("--dir", help="cluster directory (default: a new temp dir)")
    up.add_argument("--keep", action="store_true", help="keep the cluster directory at exit")
    up.add_argument("--kubeconfig-out", help="also copy the admin kubeconfig here")
    up.set_defaults(func=_up)
    where = sub.add_parser("where", help="print the directory of the control plane binaries")
    where.set_defaults(func=_where)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
