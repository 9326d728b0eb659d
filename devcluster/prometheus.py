"""Prometheus for the alert tests: promtool and a real server from Debian's package.

`hack/install-prometheus.sh` (`make prometheus`, part of `make test`) unpacks the package into
the cache; `shipped_rule_groups` reads the alert groups out of the shipped PrometheusRule (the
tests run those, never a copy kept elsewhere); `PrometheusServer` runs a server with a static
scrape config and the rules, and answers its HTTP API.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .binaries import cache_root
from .waiting import wait_for

PROMETHEUS_VERSION = "2.42.0"  # must match hack/install-prometheus.sh
REPO_ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_RULE = REPO_ROOT / "manifests" / "components" / "monitoring" / "prometheusrule.yaml"


class PrometheusNotFoundError(RuntimeError):
    """promtool or prometheus is not unpacked yet (`make prometheus`)."""


def prometheus_binary(name: str) -> Path:
    """`promtool` or `prometheus` from the unpacked package."""
    path = cache_root() / "prometheus" / PROMETHEUS_VERSION / "usr" / "bin" / name
    if not path.is_file():
        raise PrometheusNotFoundError(f"{path} is missing: run `make prometheus`")
    return path


def shipped_rule_groups() -> list[dict[str, Any]]:
    """`spec.groups` of the PrometheusRule in manifests/components/monitoring."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def fast_rule_groups(duration: str = "1s") -> list[dict[str, Any]]:
    """The shipped groups with every `for:` and the evaluation interval cut to `duration`
    (a test does not wait the shipped minutes; the expressions stay the shipped ones)."""
    groups = copy.deepcopy(shipped_rule_groups())
    for group in groups:
        group["interval"] = duration
        for rule in group["rules"]:
            rule["for"] = duration
    return groups


def write_rule_file(path: Path, groups: list[dict[str, Any]]) -> Path:
    """A Prometheus rule file (what the prometheus-operator makes of a PrometheusRule)."""
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """One Prometheus process on 127.0.0.1 scraping `targets` (HOST:PORT) statically."""

    def __init__(
        self,
        directory: Path,
        targets: list[str],
        groups: list[dict[str, Any]],
        *,
        interval: str = "1s",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = write_rule_file(directory / "rules.yaml", groups)
        self.config = directory / "prometheus.yml"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "nodesysctl",
                    "static_configs": [{"targets": targets}],
                    "scrape_timeout": interval,
                }
            ],
        }
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        argv = [
            str(prometheus_binary("prometheus")),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout=60, what="Prometheus ready", fatal=(RuntimeError,))
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log()[-3000:]}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer:
            return bool(answer.status == 200)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """The `data` of an answer of the HTTP API (`/api/v1/...`)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body}")
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def firing(self, alert: str, policy: str) -> list[dict[str, Any]]:
        """The alerts named `alert` of `policy` in state firing."""
        return [
            a
            for a in self.alerts()
            if a["labels"].get("alertname") == alert
            and a["labels"].get("policy") == policy
            and a["state"] == "firing"
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t.get("health") == "up" for t in active)
