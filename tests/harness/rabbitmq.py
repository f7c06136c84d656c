"""A private vhost on the machine's RabbitMQ for one test session, deleted (with every queue and
exchange in it) when the session ends.

RabbitMQ is not started here: tests that need it use the one this kind of machine runs on
127.0.0.1:5672 (guest/guest) and are skipped, with the reason, when it is not reachable or its
`rabbitmqctl` cannot make a vhost (AMQP itself cannot).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from typing import Any

from kombu import Connection

HOST = os.environ.get("RABBITMQ_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("RABBITMQ_TEST_PORT", "5672"))
USER = os.environ.get("RABBITMQ_TEST_USER", "guest")
PASSWORD = os.environ.get("RABBITMQ_TEST_PASSWORD", "guest")


class RabbitUnavailable(Exception):
    """Why the RabbitMQ tests cannot run here (the skip reason)."""


def _ctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RabbitUnavailable(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-300:]}")


class RabbitVhost:
    """`with RabbitVhost() as vhost:` — vhost.url is an amqp:// URL of a fresh, empty vhost."""

    def __init__(self) -> None:
        self.name = f"regina-test-{uuid.uuid4().hex[:10]}"
        self.created = False

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{self.name}"

    def start(self) -> RabbitVhost:
        try:
            socket.create_connection((HOST, PORT), timeout=1).close()
        except OSError as exc:
            raise RabbitUnavailable(f"no RabbitMQ on {HOST}:{PORT} ({exc})") from exc
        if shutil.which("rabbitmqctl") is None:
            raise RabbitUnavailable("rabbitmqctl is not on PATH (needed to make a private vhost)")
        _ctl("add_vhost", self.name)
        self.created = True
        _ctl("set_permissions", "-p", self.name, USER, ".*", ".*", ".*")
        return self

    def queue(self, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) of a queue, or None when it does not exist."""
        with Connection(self.url) as conn:
            channel: Any = conn.channel()
            try:
                ok = channel.queue_declare(queue=name, passive=True)
            except Exception as exc:  # amqp's NotFound: the failed declare closed the channel
                if getattr(exc, "code", None) == 404:
                    return None
                raise
            channel.close()
            return int(ok.message_count), int(ok.consumer_count)

    def bindings(self, queue: str) -> list[str]:
        """The exchanges a queue is bound to ('' is the default exchange every queue is on)."""
        rows = self._list("list_bindings", "source_name", "destination_name")
        return sorted(row[0] for row in rows if len(row) == 2 and row[1] == queue)

    def queues(self) -> list[str]:
        """The names of the vhost's queues."""
        return sorted(row[0] for row in self._list("list_queues", "name"))

    def consumer_heartbeats(self, prefix: str) -> list[int]:
        """The negotiated heartbeat (seconds) of each of the vhost's connections that consumes a
        queue whose name starts with `prefix`."""
        consumers = self._list("list_consumers", "queue_name", "channel_pid")
        channels = {row[1] for row in consumers if row[0].startswith(prefix)}
        consuming = {row[1] for row in self._list("list_channels", "pid", "connection") if row[0] in channels}
        return sorted(beat for pid, beat in self._connection_heartbeats() if pid in consuming)

    def heartbeats(self) -> list[int]:
        """The negotiated heartbeat (seconds, 0 for none) of each of the vhost's connections."""
        return sorted(beat for _pid, beat in self._connection_heartbeats())

    def _connection_heartbeats(self) -> list[tuple[str, int]]:
        done = subprocess.run(
            ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "vhost", "pid", "timeout"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        rows = [line.split("\t") for line in done.stdout.splitlines() if line.strip()]
        return [(row[1], int(row[2])) for row in rows if row[0] == self.name]

    def _list(self, command: str, *columns: str) -> list[list[str]]:
        argv = ["rabbitmqctl", command, "-q", "--no-table-headers", "-p", self.name, *columns]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {command} failed: {(done.stderr or done.stdout).strip()[-300:]}")
        return [line.split("\t") for line in done.stdout.splitlines() if line.strip()]

    def close(self) -> None:
        if self.created:
            _ctl("delete_vhost", self.name)
            self.created = False

    def __enter__(self) -> RabbitVhost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
