"""The monitoring component (manifests/components/monitoring), rendered through
manifests/overlays/monitoring as users apply it: the Service reaches the port the operator
serves /metrics on, the ServiceMonitor selects that Service and port, the NetworkPolicy opens
exactly that port to Prometheus and nothing else, and the base without the component opens
nothing. The PrometheusRule's alerts are tested by promtool in test_alerts.py.
"""

from __future__ import annotations

from typing import Any

from nodesysctl.cli import METRICS_BIND_ADDRESS, build_parser
from nodesysctl.metrics import parse_bind_address

from .test_manifests import of_kind, only, operator_container, render

OVERLAY = "monitoring"


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def test_the_operator_serves_metrics_on_the_port_the_deployment_names() -> None:
    container = operator_container(render("default"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    flags = build_parser().parse_args(container["args"])
    address = parse_bind_address(flags.metrics_bind_address)
    assert flags.metrics_bind_address == METRICS_BIND_ADDRESS  # on by default
    assert address is not None
    assert ports["metrics"] == address[1]


def test_the_service_and_servicemonitor_reach_every_operator_pods_metrics() -> None:
    docs = render(OVERLAY)
    deployment = only(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = named(docs, "Service", "nodesysctl-operator-metrics")
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"] for p in operator_container(docs)["ports"]}
    assert port["targetPort"] in container_ports
    monitor = only(docs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert set(wanted.items()) <= set(service["metadata"]["labels"].items())
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_only_the_metrics_port_is_opened_and_only_to_prometheus() -> None:
    docs = render(OVERLAY)
    policies = {d["metadata"]["name"]: d for d in of_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"nodesysctl-operator", "nodesysctl-operator-metrics"}
    assert "ingress" not in policies["nodesysctl-operator"]["spec"]  # the base: deny all
    scrape = policies["nodesysctl-operator-metrics"]["spec"]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert set(scrape["podSelector"]["matchLabels"].items()) <= set(pod_labels.items())
    (rule,) = scrape["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"]  # never every namespace
    assert peer["podSelector"]["matchLabels"]  # never every pod there


def test_without_the_component_nothing_is_scraped_or_alerted_on() -> None:
    docs = render("default")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Service", "ServiceMonitor", "PrometheusRule"}
    (deny,) = of_kind(docs, "NetworkPolicy")
    assert "ingress" not in deny["spec"]


def test_the_rules_live_in_the_operators_namespace() -> None:
    rule = only(render(OVERLAY), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "nodesysctl-system"
    assert [g["name"] for g in rule["spec"]["groups"]] == ["nodesysctl"]
