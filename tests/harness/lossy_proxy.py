"""A TCP proxy in front of Redis that can lose one reply.

`lose_reply_to(marker)`: the next command whose bytes hold `marker` reaches Redis and runs, then
the client's connection is cut before the reply arrives — what a client sees when the network or
Redis fails between the write and the answer. A client that sends the command again (redis-py
retries once on a connection error; some of our calls re-run a script themselves) runs it twice.
`times=2` loses the retry's reply too: the call fails though Redis ran it (twice).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from tests.harness.tcp_proxy import TcpProxy, chunks, close_all


class LossyProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._marker: bytes | None = None
        self._times = 0
        self._meanwhile: Callable[[], object] | None = None
        #: Set once a reply was lost.
        self.lost = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, marker: bytes, meanwhile: Callable[[], object] | None = None, times: int = 1) -> None:
        """Lose the reply to the next command holding `marker` (to the next `times` of them);
        `meanwhile` runs after the command ran and before the client's connection is cut (what
        another client did in between). `lost` is set once the last of them was lost."""
        with self._lock:
            self._marker = marker
            self._times = times
            self._meanwhile = meanwhile
            self.lost.clear()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        cut = threading.Event()
        threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
        threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        """Client → Redis; arms the cut when the marked command passes."""
        for data in chunks(client):
            with self._lock:
                if self._marker is not None and self._marker in data:
                    self._times -= 1
                    if self._times <= 0:
                        self._marker = None
                    cut.set()
            try:
                server.sendall(data)
            except OSError:
                break
        close_all(client, server)

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        """Redis → client; the first reply after an armed command is dropped with the connection."""
        for data in chunks(server):
            if cut.is_set():
                if self._meanwhile is not None:
                    self._meanwhile()
                close_all(client, server)
                with self._lock:
                    last = self._marker is None
                if last:
                    self.lost.set()
                return
            try:
                client.sendall(data)
            except OSError:
                break
        close_all(client, server)
