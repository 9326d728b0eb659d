"""The simulated kubelet's watches (every pod, every Node): listed, then watched.

Each object goes to ``on_event(kind, obj)`` as raw JSON (ADDED for the listed ones). The watch
resumes from the last resourceVersion it saw (bookmarks included) and lists again when that
version is too old (HTTP 410); any other failure is reported and retried after a second
(from a new list, unless it was the API server's own answer). With a ``page_size`` the list
comes in pages (thousands of 13 KB Nodes are not one answer).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

Json = dict[str, Any]


class ListWatch:
    def __init__(
        self,
        list_call: Callable[..., Any],
        what: str,
        stop: threading.Event,
        report_error: Callable[[str], None],
        on_event: Callable[[str, Json], None],
        *,
        page_size: int | None = None,
    ) -> None:
        self._list_call = list_call  # e.g. core.list_pod_for_all_namespaces
        self.what = what  # "pod watch", in error reports
        self._stop = stop
        self._report_error = report_error
        self._on_event = on_event
        self._page_size = page_size
        self._watch: Any = None

    def run(self) -> None:
        """List and watch until the stop event is set (then call :meth:`stop`)."""
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                resource_version = self._watch_from(resource_version)
            except ApiException as exc:
                if exc.status == 410:  # too old: list again
                    resource_version = None
                    continue
                if not self._stop.is_set():
                    self._report_error(f"{self.what}: {exc.status} {exc.reason}")
                    self._stop.wait(1.0)
            except Exception as exc:
                if not self._stop.is_set():
                    self._report_error(f"{self.what}: {exc!r}")
                    resource_version = None
                    self._stop.wait(1.0)

    def stop(self) -> None:
        """End the watch request in flight, so :meth:`run` sees the stop event."""
        if self._watch is not None:
            self._watch.stop()

    def _list(self) -> str:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"_preload_content": False}
            if self._page_size:
                kwargs["limit"] = self._page_size
            if token:
                kwargs["_continue"] = token
            resp = self._list_call(**kwargs)
            listing = json.loads(resp.data)
            for item in listing.get("items", []):
                self._on_event("ADDED", item)
            token = listing["metadata"].get("continue")
            if not token:
                return str(listing["metadata"]["resourceVersion"])

    def _watch_from(self, resource_version: str) -> str:
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        stream: Iterator[Json] = self._watch.stream(
            self._list_call,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=60,
            deserialize=False,
        )
        for event in stream:
            if self._stop.is_set():
                break
            obj = event["object"]
            resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self._on_event(event["type"], obj)
        return resource_version
