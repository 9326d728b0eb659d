"""The `nodesysctl` command: run the operator, or show what it did to each node."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence

from nodesysctl.config import OperatorConfig, split_list
from nodesysctl.leasing import ElectionConfig, ElectionTimings, InvalidTimingsError

STATUS_LIST_PAGE = 500
METRICS_BIND_ADDRESS = ":8081"  # beside Kopf's health endpoint (:8080 in the Deployment)
METRICS_FLAG = "--metrics-bind-address"


def _run(args: argparse.Namespace) -> int:
    # Only `run` loads Kopf: importing the handlers registers them with Kopf's default
    # registry, which `status` has no use for.
    import kopf

    import nodesysctl.handlers  # noqa: F401

    config = OperatorConfig(
        job_namespace=args.job_namespace,
        agent_image=args.agent_image,
        agent_python=args.agent_python,
        restarts_per_minute=args.restarts_per_minute,
        restart_burst=args.restart_burst,
        allowed_agent_images=args.allowed_agent_images,
        allowed_priority_classes=args.allowed_priority_classes,
        operator_namespace=args.operator_namespace,
    )
    try:
        timings = ElectionTimings(args.lease_duration, args.renew_deadline, args.retry_period)
    except InvalidTimingsError as exc:
        print(f"nodesysctl run: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # Kopf logs every spy handler's success at INFO: one line per Node heartbeat.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    def run_kopf(stop: threading.Event | None) -> int:
        kopf.run(
            # Namespaced kinds (our Jobs and their Pods) are watched in the job namespace only;
            # Nodes and policies are cluster-scoped and watched cluster-wide regardless.
            namespaces=[args.job_namespace],
            # No Kopf peering: it is not leader election (see docs/operations.md); with
            # --leader-elect only the Lease holder runs Kopf at all.
            standalone=True,
            liveness_endpoint=args.liveness,
            # The cleanup handler sets the flag too: see handlers.stop_outside_kopf.
            memo=kopf.Memo(config=config, stop_flag=stop),
            stop_flag=stop,
        )
        return 0

    from nodesysctl.metrics import process_identity, set_leader
    from nodesysctl.standby import candidate_identity

    # One identity per process, for the Lease and for nodesysctl_leader{identity} alike.
    identity = candidate_identity(os.environ) if args.leader_elect else process_identity()
    _serve_metrics(args.metrics_bind_address, identity)
    if not args.leader_elect:
        # The one process runs Kopf, so it leads.
        set_leader(identity, True)
        return run_kopf(None)
    election = ElectionConfig(
        enabled=True,
        lease_name=args.lease_name,
        namespace=args.lease_namespace or args.operator_namespace,
        timings=timings,
    )
    return _run_elected(election, identity, run_kopf, liveness=args.liveness)


def _run_elected(
    election: ElectionConfig,
    identity: str,
    run_operator: Callable[[threading.Event], int],
    *,
    liveness: str | None,
) -> int:
    from nodesysctl.election import LeaderElector, LeaseStore, lease_api_client
    from nodesysctl.kube import Rest, new_api_client
    from nodesysctl.metrics import set_leader
    from nodesysctl.standby import run_as_candidate

    def on_leading(leading: bool) -> None:
        set_leader(identity, leading)  # nodesysctl_leader{identity}

    rest = Rest(lease_api_client(new_api_client()), timeout=election.timings.request_timeout)
    store = LeaseStore(rest, election.namespace, election.lease_name)
    elector = LeaderElector(store, identity, election.timings, on_leading=on_leading)
    return run_as_candidate(elector, run_operator, liveness=liveness)


def _serve_metrics(bind_address: str, identity: str) -> None:
    """`/metrics` from plain code, before Kopf: a replica that has not won the lease (and so
    never starts Kopf) still says who it is and that it is not leading."""
    from nodesysctl.metrics import parse_bind_address, serve, set_leader

    address = parse_bind_address(bind_address)
    if address is None:
        return
    host, port = serve(address)
    set_leader(identity, False)
    logging.getLogger(__name__).info("serving /metrics on %s:%d", host, port)


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from nodesysctl.kube import Kube, new_api_client
    from nodesysctl.nodewatch import list_node_facts
    from nodesysctl.report import build_rows, render, render_restarts

    kube = Kube(new_api_client())
    policies = [
        p for p in kube.list_policies() if not args.policy or p["metadata"]["name"] == args.policy
    ]
    if args.restarts:
        print(render_restarts(policies))
        return 0
    # A one-shot command: bigger pages than the operator's watch (fewer round trips).
    nodes, _ = list_node_facts(kube, page=STATUS_LIST_PAGE)
    width = shutil.get_terminal_size((120, 40)).columns
    print(render(build_rows(policies, nodes, datetime.now(UTC)), width=width))
    return 0


def build_parser() -> argparse.ArgumentParser:
    defaults = OperatorConfig.from_env()
    parser = argparse.ArgumentParser(prog="nodesysctl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("--job-namespace", default=defaults.job_namespace)
    run.add_argument("--agent-image", default=defaults.agent_image)
    run.add_argument(
        "--agent-python",
        default=defaults.agent_python,
        help="interpreter the agent Job runs (the image's python)",
    )
    run.add_argument(
        "--allowed-agent-images",
        type=split_list,
        default=defaults.allowed_agent_images,
        metavar="IMAGE[,IMAGE...]",
        help="images a policy's job.image may name besides --agent-image (pin digests: "
        "repo@sha256:...); default none",
    )
    run.add_argument(
        "--allowed-priority-classes",
        type=split_list,
        default=defaults.allowed_priority_classes,
        metavar="NAME[,NAME...]",
        help="PriorityClasses a policy's job.priorityClassName may name; default none",
    )
    run.add_argument(
        "--operator-namespace",
        default=defaults.operator_namespace,
        help="the operator's own namespace: never restarted unless a policy names it",
    )
    run.add_argument("--restarts-per-minute", type=float, default=defaults.restarts_per_minute)
    run.add_argument("--restart-burst", type=int, default=defaults.restart_burst)
    run.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    run.add_argument(
        METRICS_FLAG,
        default=os.environ.get("NODESYSCTL_METRICS_BIND_ADDRESS", METRICS_BIND_ADDRESS),
        metavar="HOST:PORT",
        help="where /metrics (Prometheus text format) listens: HOST:PORT, :PORT for every "
        f"address, 0 for off; default {METRICS_BIND_ADDRESS}",
    )
    try:
        election_defaults = ElectionConfig.from_env(os.environ)
    except InvalidTimingsError as exc:
        sys.exit(f"nodesysctl: NODESYSCTL_LEASE_*: {exc}")
    _add_election_flags(run, election_defaults)
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)
    status = commands.add_parser("status", help="print each selected node's state per policy")
    status.add_argument("--policy", help="only this NodeSysctlPolicy")
    status.add_argument(
        "--restarts",
        action="store_true",
        help="the restart waves instead: what the next (or last) wave restarts, and why",
    )
    status.set_defaults(func=_status)
    return parser


def _add_election_flags(run: argparse.ArgumentParser, defaults: ElectionConfig) -> None:
    election = run.add_argument_group(
        "leader election", "one active replica among several, on a coordination.k8s.io Lease"
    )
    election.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=defaults.enabled,
        help="run Kopf only while holding the Lease (env NODESYSCTL_LEADER_ELECT); off: a "
        "single process, which must then be the only one",
    )
    election.add_argument("--lease-name", default=defaults.lease_name)
    election.add_argument(
        "--lease-namespace",
        default=defaults.namespace,
        help="default: --operator-namespace",
    )
    timings = defaults.timings
    election.add_argument(
        "--lease-duration",
        type=float,
        default=timings.lease_duration,
        metavar="SECONDS",
        help="how long a standby waits after the leader's last renewal it saw",
    )
    election.add_argument(
        "--renew-deadline",
        type=float,
        default=timings.renew_deadline,
        metavar="SECONDS",
        help="a leader whose renewals failed this long exits (code 3)",
    )
    election.add_argument(
        "--retry-period",
        type=float,
        default=timings.retry_period,
        metavar="SECONDS",
        help="how often the Lease is renewed or polled; each request times out after half",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
