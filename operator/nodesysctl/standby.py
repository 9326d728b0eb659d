"""The operator process as a candidate: a standby until it holds the Lease, then the operator.

`run_as_candidate` waits for the Lease (answering the kubelet's probes on the liveness
address meanwhile, since Kopf's endpoint exists only once Kopf runs), then runs the operator
(Kopf, passed in by the entry point: this module imports no Kopf) while a thread renews the
Lease, and releases the Lease once the operator stopped.

A leader whose renewals fail until the renew deadline ends the process at once with
`os._exit(EXIT_LEASE_LOST)`: no graceful stop, because a graceful stop runs Kopf's handlers
to their end, which may write to the cluster after a standby took over. The exit code is its
own (not 1, an uncaught Python error; not 137 or 143, a signal) so the pod's
`lastState.terminated.exitCode` tells a lost lease apart; the kubelet restarts the container,
which comes back as a standby.
"""

from __future__ import annotations

import http.server
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from urllib.parse import urlsplit

from nodesysctl.election import LeaderElector

logger = logging.getLogger(__name__)

EXIT_LEASE_LOST = 3
POD_NAME_ENV = "POD_NAME"  # the Deployment sets it from the downward API
STANDBY_ANSWER = b"standby: waiting for the lease\n"


def candidate_identity(env: Mapping[str, str] = os.environ) -> str:
    """The pod's name (or the host's) and a random suffix: a restarted container (same pod
    name) never mistakes the Lease its previous life held for its own."""
    return f"{env.get(POD_NAME_ENV) or socket.gethostname()}_{secrets.token_hex(4)}"


class _ProbeHandler(http.server.BaseHTTPRequestHandler):
    probe_path = "/"

    def do_GET(self) -> None:
        found = urlsplit(self.path).path == self.probe_path
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if found:
            self.wfile.write(STANDBY_ANSWER)

    def log_message(self, format: str, *args: object) -> None:
        del format, args  # one line per probe is noise


class StandbyProbes:
    """200 on the liveness URL's path (Kopf's `--liveness` address) while this process is a
    standby: it is alive, and ready to take over. Closed, port released, before Kopf binds
    the same address."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        handler = type("StandbyProbeHandler", (_ProbeHandler,), {"probe_path": parts.path or "/"})
        self.server = http.server.ThreadingHTTPServer(
            (parts.hostname or "0.0.0.0", 80 if parts.port is None else parts.port),
            handler,
        )
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="standby-probes", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _exit_now(code: int) -> None:
    # No logging.shutdown(): it takes the handlers' locks, which another thread may hold; the
    # stream handler has flushed the line that says why already. One raw line, then out.
    os.write(2, f"nodesysctl: lost the lease, exiting with {code}\n".encode())
    os._exit(code)


def run_as_candidate(
    elector: LeaderElector,
    run_operator: Callable[[threading.Event], int],
    *,
    liveness: str | None,
    exit_process: Callable[[int], None] = _exit_now,
) -> int:
    """Stand by until the Lease is ours, then `run_operator(stop)` until it returns; `stop` is
    set by SIGTERM or SIGINT (also while standing by: then the process ends with 0)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        logger.info("signal %d: stopping", signum)
        stop.set()

    # Kopf installs its own handlers once it runs; ours cover the time before and after it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    probes = StandbyProbes(liveness) if liveness else None
    try:
        logger.info("standing by for the lease %s/%s as %s", elector.store.namespace,
                    elector.store.name, elector.identity)  # fmt: skip
        leading = elector.acquire(stop)
    finally:
        if probes is not None:
            probes.close()
    if not leading:
        return 0

    done = threading.Event()

    def renew() -> None:
        if not elector.keep_leading(done):
            exit_process(EXIT_LEASE_LOST)

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        return run_operator(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)  # Kopf's are gone with its loop
        done.set()
        renewer.join()
        elector.release()
