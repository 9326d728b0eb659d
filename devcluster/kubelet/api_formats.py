"""The wire formats the simulated kubelet writes in: API timestamps and patch content types."""

from __future__ import annotations

import datetime as dt

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def now() -> str:
    """metav1.Time: seconds (conditions, container states)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    """metav1.MicroTime: microseconds (a Lease's renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
