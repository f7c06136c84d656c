"""A TCP proxy in front of an HTTP server that cuts a connection in the middle of an answer.

`cut_after(marker, count)`: on the next connection whose answer (server → client) carries
`marker` `count` times, the chunk that completes the count is passed on and then both sides of
that connection are closed — what a client sees when a load balancer, a NAT or the network drops
a long NDJSON stream. Later connections pass untouched, unless `refuse_after_cut` stops the proxy
accepting new ones (a server that stays unreachable).
"""

from __future__ import annotations

import socket
import threading

from tests.harness.lossy_proxy import chunks as _chunks
from tests.harness.lossy_proxy import close_all as _close


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._count = 0
        self._refuse = False
        self._closed = False
        self._socks: list[socket.socket] = []
        #: Set once a connection was cut.
        self.cut = threading.Event()
        #: Connections accepted so far.
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttingProxy:
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()
        return self

    def cut_after(self, marker: bytes, count: int = 1, refuse_after_cut: bool = False) -> None:
        """Arm one cut: after the answer chunk holding the `count`-th `marker`."""
        with self._lock:
            self._marker, self._count, self._refuse = marker, count, refuse_after_cut
            self.cut.clear()

    def close(self) -> None:
        self._stop_accepting()
        for s in list(self._socks):
            _close(s)

    def _stop_accepting(self) -> None:
        """Refuse new connections (shutdown wakes the thread blocked in accept; close alone would not)."""
        self._closed = True
        _close(self._listener)

    def __enter__(self) -> CuttingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                _close(client)
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            self.connections += 1
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        seen = 0
        for data in _chunks(src):
            try:
                dst.sendall(data)
            except OSError:
                break
            if answer and self._marker is not None:
                with self._lock:
                    marker = self._marker
                    if marker is None:
                        continue
                    seen += data.count(marker)
                    if seen < self._count:
                        continue
                    self._marker = None
                    refuse = self._refuse
                if refuse:
                    self._stop_accepting()
                _close(src, dst)
                self.cut.set()
                return
        _close(src, dst)
