"""A TCP proxy in front of Redis that refuses chosen commands: they never reach Redis.

`refuse(*markers)`: while armed, a command whose bytes hold every one of `markers` is not passed
on; the client's connection is cut instead — what a client sees when Redis or the network fails
just as it writes that command. redis-py reconnects and sends it once more, which is refused the
same way, so the call fails: Redis failing twice in a row for exactly the writes a test picks
(other commands, the same client's included, pass). `allow()` disarms it.

`hold(*markers)`: the next such command is not passed on either, but its connection stays open:
the client waits for a reply that never comes (`held` is set) — the moment a test kills it in,
after every write before that command and before that one.
"""

from __future__ import annotations

import socket
import threading

from tests.harness.tcp_proxy import TcpProxy, chunks, close_all


class RefusingProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._markers: tuple[bytes, ...] = ()
        #: Commands refused so far.
        self.refused = 0
        self._hold: tuple[bytes, ...] = ()
        #: Set once a command was held.
        self.held = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def refuse(self, *markers: bytes) -> None:
        """Refuse every command holding all of `markers` until `allow()`."""
        with self._lock:
            self._markers = markers

    def allow(self) -> None:
        with self._lock:
            self._markers = ()

    def hold(self, *markers: bytes) -> None:
        """Hold the next command holding all of `markers` (see the module docstring)."""
        with self._lock:
            self._hold = markers
            self.held.clear()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        holding = False
        for data in chunks(client):
            with self._lock:
                refused = bool(self._markers) and all(m in data for m in self._markers)
                if refused:
                    self.refused += 1
                if self._hold and all(m in data for m in self._hold):
                    self._hold, holding = (), True
                    self.held.set()
            if refused:
                break
            if holding:  # this command and whatever follows it on the connection go nowhere
                continue
            try:
                server.sendall(data)
            except OSError:
                break
        close_all(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        for data in chunks(server):
            try:
                client.sendall(data)
            except OSError:
                break
        close_all(client, server)
