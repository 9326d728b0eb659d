"""Objects as the API server's JSON, for tests that read them through the typed client.

Every field of a client model is optional; as a dict (camelCase keys, as `kubectl -o json`
prints it) a missing field fails the test with a KeyError instead of needing a None check.
`read_json` asks for the raw answer; `as_dict` converts a model already fetched."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kubernetes import client


def as_dict(obj: Any) -> dict[str, Any]:
    body: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return body


def read_json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The decoded answer of a client call, without building its model."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)
