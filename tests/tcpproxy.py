"""A small TCP proxy in front of the API server, for one operator process: it records when each
connection opened (the operator's first requests after a takeover open new ones) and can
black-hole everything (a network partition: bytes are read and dropped, nothing is answered,
nothing is refused; the client only sees its own timeouts)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml

CHUNK = 65536


class BlackholeProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.blackholed = threading.Event()
        self.closed = threading.Event()
        self.opened_at: list[float] = []  # time.time() of each accepted connection
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.opened_at.append(time.time())
                self.sockets.append(client)
            if self.blackholed.is_set():
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                if not self.blackholed.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                if not self.blackholed.is_set():
                    end.close()

    def _drain(self, client: socket.socket) -> None:
        try:
            while client.recv(CHUNK):
                pass
        except OSError:
            pass

    def blackhole(self) -> float:
        """Cut the process off: from now on nothing it sends arrives, nothing comes back."""
        self.blackholed.set()
        return time.time()

    def connections_after(self, moment: float) -> list[float]:
        with self.lock:
            return [t for t in self.opened_at if t > moment]

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                sock.close()

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of `original` whose clusters point at this proxy (the serving certificate
        is for 127.0.0.1, so TLS still verifies)."""
        config: dict[str, Any] = yaml.safe_load(original.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path
