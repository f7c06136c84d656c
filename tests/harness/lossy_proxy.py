"""A TCP proxy in front of Redis that can lose one reply.

`lose_reply_to(marker)`: the next command whose bytes hold `marker` reaches Redis and runs, then
the client's connection is cut before the reply arrives — what a client sees when the network or
Redis fails between the write and the answer. A client that sends the command again (redis-py
retries once on a connection error; some of our calls re-run a script themselves) runs it twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class LossyProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: Set once a reply was lost.
        self.lost = threading.Event()
        self._socks: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LossyProxy:
        threading.Thread(target=self._accept, daemon=True, name="lossy-proxy").start()
        return self

    def lose_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker
            self.lost.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in list(self._socks):
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> LossyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        """Client → Redis; arms the cut when the marked command passes."""
        for data in chunks(client):
            with self._lock:
                if self._marker is not None and self._marker in data:
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
                close_all(client, server)
                self.lost.set()
                return
            try:
                client.sendall(data)
            except OSError:
                break
        close_all(client, server)


def chunks(sock: socket.socket) -> Iterator[bytes]:
    """What `sock` receives, chunk by chunk, until it closes or fails."""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data


def close_all(*socks: socket.socket) -> None:
    """Shut down and close each socket, whatever state it is in."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
