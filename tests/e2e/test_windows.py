"""Maintenance windows end to end (issue 16): a policy whose restart window is closed
remediates at once and restarts nothing until the window opens; one whose rollout window is
closed reports the drift and changes nothing until its window opens, then fixes the node.

Each window opens a minute or two ahead (windows are whole minutes), in Europe/Berlin wall
time on that day only, so the zone and the day list are exercised against the real clock."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devcluster.nodes import SimulatedNode
from devcluster.waiting import wait_for
from nodesysctl.maintenance import DEFERRED_CONDITION, RESTARTS_DEFERRED_EVENT
from nodesysctl.planning import NodeState, format_time

from .conftest import OperatorProcess, Policies
from .test_operator import (
    RANGE,
    WIDENED,
    condition,
    deployment,
    enforce_spec,
    events_for,
    node_result,
    rollouts,
    wait_node_state,
    wait_policy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ZONE = "Europe/Berlin"
RESTART_ME = {"restart": "yes"}


def window_ahead(seconds: float) -> tuple[dict[str, Any], datetime]:
    """A window opening on the first whole minute at least `seconds` from now, for ten
    minutes, on that day (Berlin time) only; and the instant it opens."""
    opens = datetime.fromtimestamp(math.ceil((time.time() + seconds) / 60) * 60, UTC)
    local = opens.astimezone(ZoneInfo(ZONE))
    end = local + timedelta(minutes=10)
    window = {
        "days": [local.strftime("%A")],
        "start": local.strftime("%H:%M"),
        "end": end.strftime("%H:%M"),
        "timeZone": ZONE,
    }
    return window, opens


def deferred(body: dict[str, Any]) -> dict[str, Any]:
    return condition(body, DEFERRED_CONDITION)


def test_a_closed_restart_window_remediates_at_once_and_restarts_at_the_opening(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    test_namespace: str,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    deployment(api_client, test_namespace, "host-web", node.name, RESTART_ME)
    window, opens = window_ahead(90)
    name = f"{test_id}-restartwin"
    policies.create(
        name,
        enforce_spec(
            node_factory.selector,
            restart={"selector": {"matchLabels": RESTART_ME}, "window": window},
        ),
    )
    fixed = wait_node_state(api_client, node.name, name, NodeState.REMEDIATED)
    assert fixed.restart_pending
    assert node.get_sysctl(RANGE) == "32768\t60999"  # the fix did not wait
    body = wait_policy(
        policies,
        name,
        lambda b: deferred(b).get("reason") == "RestartWindowClosed",
        "restarts deferred",
    )
    assert format_time(opens) in deferred(body)["message"]
    assert body["status"]["restartWave"]["remaining"] == 1
    assert time.time() < opens.timestamp()  # what follows is observed before the opening
    assert rollouts(api_client, test_namespace, "host-web") == (1, None)
    [announced] = events_for(api_client, name, RESTARTS_DEFERRED_EVENT)
    assert format_time(opens) in announced["message"]

    body = wait_policy(
        policies,
        name,
        lambda b: "lastRestart" in (b.get("status") or {}),
        "the wave done after the window opened",
        timeout=opens.timestamp() - time.time() + 90,
    )
    sets, restarted_at = rollouts(api_client, test_namespace, "host-web")
    assert sets == 2
    assert restarted_at is not None
    assert datetime.fromisoformat(restarted_at.replace("Z", "+00:00")) >= opens
    assert body["status"]["lastRestart"]["workloads"] == [f"Deployment/{test_namespace}/host-web"]
    assert deferred(body)["status"] == "False"
    result = node_result(api_client, node.name, name)
    assert result is not None
    assert not result.restart_pending
    assert len(events_for(api_client, "host-web", "Restarted")) == 1  # once


def test_a_closed_rollout_window_reports_drift_and_fixes_at_the_opening(
    operator: OperatorProcess,
    policies: Policies,
    node_factory: Any,
    api_client: Any,
    test_id: str,
) -> None:
    node: SimulatedNode = node_factory(sysctls=WIDENED)
    window, opens = window_ahead(90)
    name = f"{test_id}-rolloutwin"
    spec = enforce_spec(node_factory.selector)
    policies.create(name, {**spec, "rollout": {**spec["rollout"], "window": window}})
    found = wait_node_state(api_client, node.name, name, NodeState.DRIFTED)
    assert found.fix_deferred
    assert f"fix waits for the rollout window (opens {format_time(opens)})" in found.message
    assert time.time() < opens.timestamp()
    assert node.get_sysctl(RANGE) == "1024\t65000"  # check-only: nothing written
    assert node.sysctl_conf_files() == {}
    assert events_for(api_client, node.name, "DriftDetected")
    body = wait_policy(
        policies,
        name,
        lambda b: deferred(b).get("reason") == "RolloutWindowClosed",
        "fixes deferred",
    )
    assert format_time(opens) in deferred(body)["message"]

    fixed = wait_node_state(
        api_client,
        node.name,
        name,
        NodeState.REMEDIATED,
        timeout=opens.timestamp() - time.time() + 90,
    )
    assert fixed.checked_at >= opens
    assert not fixed.fix_deferred
    wait_for(
        lambda: node.get_sysctl(RANGE) == "32768\t60999", timeout=10, what="the range narrowed"
    )
