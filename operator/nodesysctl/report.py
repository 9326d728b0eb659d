"""Pure rendering of `nodesysctl status`: one row per (node, policy), sized for a terminal; and
of `nodesysctl status --restarts`: each policy's restart wave in progress (or reported) and its
last completed one, workload by workload, with the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from nodesysctl.api import InvalidPolicy, NodeSysctlPolicySpec, parse_spec
from nodesysctl.planning import NodeFacts, reported_state, spec_hash, unavailable

HEADERS = ("NODE", "POLICY", "STATE", "CHECKED", "DETAIL")


@dataclasses.dataclass(frozen=True)
class Row:
    node: str
    policy: str
    state: str
    checked: str
    detail: str


def age(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def build_rows(
    policies: Sequence[Mapping[str, Any]], nodes: Iterable[NodeFacts], now: datetime
) -> list[Row]:
    """Every node a policy selects, with the state the operator would report for it. (Without
    the Jobs, a node whose check is still running when it became unavailable shows Waiting
    here and Pending in the policy status.)"""
    parsed: list[tuple[str, NodeSysctlPolicySpec | None]] = []
    for body in policies:
        name = body["metadata"]["name"]
        try:
            parsed.append((name, parse_spec(body.get("spec") or {})))
        except InvalidPolicy:
            parsed.append((name, None))
    rows = []
    for node in sorted(nodes, key=lambda n: n.name):
        for name, spec in parsed:
            if spec is None:
                rows.append(Row(node.name, name, "Invalid", "-", "the policy spec is invalid"))
                continue
            if not spec.node_selector.matches(node.labels):
                continue
            state, detail = reported_state(node, name, spec_hash(spec), unavailable(node, spec))
            result = node.results.get(name)
            checked = age(result.checked_at, now) + " ago" if result else "never"
            rows.append(Row(node.name, name, state.value, checked, detail))
    return rows


def render(rows: Sequence[Row], width: int = 120) -> str:
    """A plain-text table; the last column is cut to fit `width`."""
    if not rows:
        return "no node is selected by any NodeSysctlPolicy"
    table = [HEADERS, *[dataclasses.astuple(r) for r in rows]]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(HEADERS) - 1)]
    lines = []
    for line in table:
        head = "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False))
        room = max(10, width - len(head) - 2)
        detail = str(line[-1])
        if len(detail) > room:
            detail = detail[: room - 1] + "…"
        lines.append(f"{head}  {detail}".rstrip())
    return "\n".join(lines)


def render_restarts(policies: Sequence[Mapping[str, Any]]) -> str:
    """What each policy's status says about restarts: the wave in progress or only reported
    (`restartWave`: the next restarts and why), the last completed wave and what it left
    alone, and the budget."""
    lines: list[str] = []
    for body in policies:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        wave, last = status.get("restartWave"), status.get("lastRestart")
        budget = status.get("restartBudget")
        if not (wave or last):
            lines.append(f"{name}: no restart wave yet")
            continue
        if wave:
            counts = ", ".join(f"{n} {a}" for a, n in sorted((wave.get("counts") or {}).items()))
            lines.append(
                f"{name}: wave {wave['wave']} ({wave['mode']}) over {wave.get('nodes', 0)} nodes, "
                f"{wave.get('remaining', 0)} to do: {counts}"
            )
            lines += [f"  {s['action']:16} {s['workload']}  {s.get('reason', '')}".rstrip()
                      for s in wave.get("steps") or []]  # fmt: skip
        if last:
            verb = "reported" if last.get("report") else "restarted"
            lines.append(
                f"{name}: last wave {last['wave']} at {last['at']}: {verb} {last.get('count', 0)} "
                f"workloads ({last.get('evicted', 0)} DaemonSet pods evicted) over "
                f"{last.get('nodes', 0)} nodes: {', '.join(last.get('workloads') or []) or '-'}"
            )
            lines += [f"  {s['action']:16} {s['workload']}  {s.get('reason', '')}".rstrip()
                      for s in last.get("notRestarted") or []]  # fmt: skip
        if budget:
            lines.append(
                f"{name}: budget {budget.get('remaining', 0)}/{budget['perHour']} an hour left "
                f"(full at {budget['fullAt']})"
            )
    return "\n".join(lines) or "no NodeSysctlPolicy"
