"""Client models as the API server's JSON, for tests that read objects through the typed client.

Every field of a client model is optional; as a dict (camelCase keys, as `kubectl -o json`
prints it) a missing field fails the test with a KeyError instead of needing a None check."""

from __future__ import annotations

from typing import Any

from kubernetes import client


def as_dict(obj: Any) -> dict[str, Any]:
    body: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return body
