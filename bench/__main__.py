"""`python -m bench`: convergence against the floor, API cost, idle memory/CPU, and a restart
wave's requests and duration; a table and JSON.

python -m bench                          # the full run (docs/performance.md)
python -m bench --sizes 50 --idle-sizes 200 --window 10 --heartbeats 200   # a smoke run
python -m bench --sizes "" --cordoned-sizes 1000 --idle-sizes ""   # 5 % of the nodes cordoned

Every measurement is guarded (bench/health.py): a size whose nodes do not all get Ready, or
where a node leaves Ready or the Lease renewals fall behind during the measurement, is stopped
with the reason (in the JSON and printed), and the larger sizes of that kind are not run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .convergence import Fleet, converge
from .harness import REPO, BenchCluster
from .health import NodeHealth, RunStoppedError
from .idle import idle_at
from .restart_wave import measure as measure_restart_wave
from .restart_wave import table as restart_wave_table

log = logging.getLogger("bench")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def table(results: dict[str, Any]) -> str:
    lines = [
        f"Convergence (a quarter of the nodes drifted; maxConcurrent {results['max_concurrent']})",
        f"{'nodes':>6} {'cordoned':>8} {'floor s':>8} {'operator s':>10} {'ratio':>6} "
        f"{'op req/node':>11} {'op writes/node':>14} {'op CPU s':>8}",
    ]
    for row in results["convergence"]:
        if "stopped" in row or "skipped" in row:
            cordon = f"{row.get('cordon_percent', 0):g}%"
            lines.append(f"{row['nodes']:>6} {cordon:>8} {_not_run(row)}")
            continue
        lines.append(
            f"{row['nodes']:>6} {row['cordoned']:>8} {row['floor_seconds']:>8.1f} "
            f"{row['operator_seconds']:>10.1f} {row['ratio']:>6.2f} "
            f"{row['operator_requests_per_node_total']:>11.2f} "
            f"{row['operator_writes_per_node']:>14.2f} {row['operator_cpu_seconds']:>8.1f}"
        )
    lines += [
        "",
        "Idle operator (every node compliant, nothing due)",
        f"{'nodes':>6} {'peak RSS MiB':>12} {'RSS MiB':>8} {'idle CPU %':>10} "
        f"{'idle writes':>11} {'jobs':>5} {'ms/ignored update':>17} {'hb writes':>9} "
        f"{'scrapes':>7} {'scrape ms':>9}",
    ]
    for row in results["idle"]:
        if "stopped" in row or "skipped" in row:
            lines.append(f"{row['nodes']:>6} {_not_run(row)}")
            continue
        lines.append(
            f"{row['nodes']:>6} {row['peak_rss_mib']:>12.1f} {row['rss_mib']:>8.1f} "
            f"{row['idle_cpu_percent']:>10.2f} {sum(row['idle_writes'].values()):>11} "
            f"{row['jobs_created_while_idle']:>5} {row['cpu_ms_per_ignored_update']:>17.3f} "
            f"{sum(row['heartbeat_writes'].values()):>9} "
            f"{row['metrics'].get('scrapes', 0):>7} "
            f"{row['metrics'].get('scrape_ms_mean', 0.0):>9.2f}"
        )
    if results.get("restart_wave"):
        lines += [
            "",
            "Restart wave (1000 remediated nodes, 500 Deployments a tenth hostNetwork, 5 "
            "DaemonSets 2 hostNetwork)",
            restart_wave_table(results["restart_wave"]),
        ]
    return "\n".join(lines)


def _not_run(row: dict[str, Any]) -> str:
    return f"STOPPED: {row['stopped']}" if "stopped" in row else f"not run: {row['skipped']}"


class Cap:
    """Once a run of one kind is stopped, the larger sizes of that kind are not run."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def run(self, row: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if self.reason is not None:
            return {**row, "skipped": self.reason}
        try:
            return measure()
        except RunStoppedError as exc:
            log.error("STOPPED at %d nodes: %s", row["nodes"], exc)
            self.reason = f"capped: stopped at {row['nodes']} nodes"
            return {**row, "stopped": str(exc)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", type=_ints, default=[50, 200, 1000])
    parser.add_argument(
        "--cordoned-sizes",
        type=_ints,
        default=[],
        help="convergence sizes run (also) with --cordon-percent of the nodes cordoned",
    )
    parser.add_argument("--cordon-percent", type=float, default=5.0)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds before a run is stopped"
    )
    parser.add_argument("--idle-sizes", type=_ints, default=[1000, 5000])
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--window", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--heartbeats", type=int, default=5000)
    parser.add_argument(
        "--node-images", type=int, default=50, help="status.images per Node in the idle runs"
    )
    parser.add_argument(
        "--idle-without-metrics",
        action="store_true",
        help="each idle size once more with /metrics off (what metrics cost)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    # SIGTERM (timeout, Ctrl-C in make) unwinds like an exception: the cluster is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("devcluster").setLevel(logging.WARNING)
    if any(sorted(sizes) != sizes for sizes in (args.sizes, args.cordoned_sizes, args.idle_sizes)):
        parser.error("sizes grow: give them in increasing order")
    if not 0 < args.cordon_percent < 100:
        parser.error("--cordon-percent is a share of the nodes, above 0 and below 100")
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average_at_start": os.getloadavg(),
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "max_concurrent": args.concurrency,
        "cordon_percent": args.cordon_percent,
        "convergence": [],
        "idle": [],
        "restart_wave": [],
    }
    log.info("restart wave (in-process model of the cluster, the operator's own requests)")
    results["restart_wave"] = measure_restart_wave()
    started = time.monotonic()
    with BenchCluster() as bench:
        fleet = Fleet(bench)
        health = NodeHealth(bench)
        results["grace_seconds"] = health.grace_seconds
        converging = Cap()
        runs = sorted({(size, 0.0) for size in args.sizes}
                      | {(size, args.cordon_percent) for size in args.cordoned_sizes})  # fmt: skip
        for size, cordon in runs:
            log.info("convergence at %d nodes, %g %% cordoned", size, cordon)
            measure = functools.partial(
                converge, bench, fleet, size, args.concurrency, health=health,
                cordon_percent=cordon, timeout=args.timeout,
            )  # fmt: skip
            row = converging.run({"nodes": size, "cordon_percent": cordon}, measure)
            log.info("%s", json.dumps(row))
            results["convergence"].append(row)
        idling = Cap()
        for size in args.idle_sizes:
            log.info("idle operator at %d nodes", size)
            measure = functools.partial(
                idle_at, bench, fleet, size, window=args.window, heartbeats=args.heartbeats,
                node_images=args.node_images, health=health,
                without_metrics=args.idle_without_metrics,
            )  # fmt: skip
            row = idling.run({"nodes": size}, measure)
            log.info("%s", json.dumps(row))
            results["idle"].append(row)
    results["load_average_at_end"] = os.getloadavg()
    results["total_seconds"] = round(time.monotonic() - started, 1)
    out = args.out or REPO / "bench" / "results" / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
