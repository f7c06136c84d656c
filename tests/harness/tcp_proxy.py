"""A TCP proxy on 127.0.0.1 in front of one upstream server: the accept loop and socket helpers
the fault-injecting proxies share (`lossy_proxy` for Redis, `cutting_proxy` for HTTP). A
subclass says what happens to each connection's two directions (`relay`)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Self


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._closed = False
        self._socks: list[socket.socket] = []
        #: Connections accepted so far.
        self.connections = 0

    def start(self) -> Self:
        threading.Thread(target=self._accept, daemon=True, name=type(self).__name__).start()
        return self

    def close(self) -> None:
        self.stop_accepting()
        close_all(*self._socks)

    def drop_connections(self) -> None:
        """Close every connection passed so far, and go on accepting new ones: what clients see
        when the network drops their connections."""
        socks, self._socks = self._socks, []
        close_all(*socks)

    def stop_accepting(self) -> None:
        """Refuse new connections (shutdown wakes the thread blocked in accept; close alone would not)."""
        self._closed = True
        close_all(self._listener)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        """Start passing one connection's data both ways (threads of the subclass's own)."""
        raise NotImplementedError

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                close_all(client)
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                close_all(client)
                continue
            self.connections += 1
            self._socks += [client, server]
            self.relay(client, server)


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
