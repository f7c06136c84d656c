"""A TCP proxy in front of a server (the tests' S3) that can be made slow or unreachable.

`delay`: seconds each answer chunk (server → client) is held back while set — slow storage.
`down`: while set, connections are closed as soon as they are accepted or pass data, and the
server is not reached — storage down (a client sees its connection reset, every call fails).
Both can be changed at any time; clearing them makes the server reachable and fast again.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.harness.tcp_proxy import TcpProxy, chunks, close_all


class DelayProxy(TcpProxy):
    delay = 0.0
    down = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def relay(self, client: socket.socket, server: socket.socket) -> None:
        if self.down:
            close_all(client, server)
            return
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        for data in chunks(src):
            if answer and self.delay:
                time.sleep(self.delay)
            if self.down:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        close_all(src, dst)
