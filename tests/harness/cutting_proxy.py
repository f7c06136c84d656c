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

from tests.harness.tcp_proxy import TcpProxy, chunks, close_all


class CuttingProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._marker: bytes | None = None
        self._count = 0
        self._refuse = False
        #: Set once a connection was cut.
        self.cut = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, marker: bytes, count: int = 1, refuse_after_cut: bool = False) -> None:
        """Arm one cut: after the answer chunk holding the `count`-th `marker`."""
        with self._lock:
            self._marker, self._count, self._refuse = marker, count, refuse_after_cut
            self.cut.clear()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        seen = 0
        for data in chunks(src):
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
                    self.stop_accepting()
                close_all(src, dst)
                self.cut.set()
                return
        close_all(src, dst)
