"""gunicorn settings and hooks for `regina web` (`--config python:gunicorn_conf`).

It lives beside celeryconfig.py, outside the `api` package, whose import would load Flask and
redis into the master before its gevent workers fork and monkey-patch.

- gunicorn's own lines in Regina's log format (regina/logs.py); its access log stays off unless
  `accessLog` is set (a `logconfig_dict` would switch it on for every request).
- SIGHUP reloads the agent registry everywhere instead of restarting the web processes (which
  would cut open streams): the master passes it on to its workers, each of which reloads
  (debounced) and announces the reload to every other process through Redis.
- An exiting web process drops its live gauges from the shared metrics directory.
- Idle keep-alive connections are kept longer than clients pool them (`regina web` passes
  `--keep-alive 75`), and `ReginaWebWorker` closes them at once when the process stops, so a
  long keep-alive never holds up a shutdown for the graceful timeout.
- A response's status line and headers go out in the same write as its first piece of body
  (`OneWriteResponse`): one send per plain response instead of two.
- A request gunicorn refuses itself before the app sees it (a Content-Length of -1 or two of
  them, a broken request line, too many headers) is answered `{"error": …}` in JSON like every
  other error (`write_json_error`), not gunicorn's HTML page.
"""

from __future__ import annotations

import json
import signal
from types import TracebackType
from typing import Any

import gevent
from gunicorn import util as gunicorn_util  # type: ignore[import-untyped]
from gunicorn.glogging import Logger  # type: ignore[import-untyped]
from gunicorn.http import wsgi as gunicorn_wsgi  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]

from regina.config import load_settings
from regina.logs import formatter

_settings = load_settings()


class ReginaLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with Regina's line format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        shown = formatter("web", _settings.log_format)
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(shown)


logger_class = ReginaLogger


class _Gathered:
    """Stands in for a socket while gunicorn writes a response's head and first piece of body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(data)


class OneWriteResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's response whose status line and headers go out in one write with the first
    non-empty piece of the body (gunicorn writes them on their own first: two sends, and two
    wake-ups of the client, per plain response). An empty first piece (a stream's, to show its
    headers at once, api/runs.py) still sends the head alone."""

    def write(self, arg: bytes) -> None:
        if self.headers_sent or not arg:
            super().write(arg)
            return
        sock, gathered = self.sock, _Gathered()
        self.sock = gathered  # gunicorn's own framing (length limit, chunks), gathered
        try:
            super().write(arg)
        finally:
            self.sock = sock
        sock.sendall(b"".join(gathered.parts))


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error` (called only by `Worker.handle_error`, which picks the status
    and message of a request it could not parse) answering `{"error"}` as SPEC §4 says every error
    is. gunicorn has no setting for this page; the worker puts this in its place."""
    body = json.dumps({"error": mesg or reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


class ReginaWebWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker whose connections waiting for their next request close as soon as
    the process is told to stop (gunicorn's own waits for them up to the graceful timeout),
    whose responses are `OneWriteResponse`s and whose own errors are JSON."""

    def init_process(self) -> None:
        self.idle: dict[gevent.Greenlet, gevent.Timeout] = {}
        gunicorn_wsgi.Response = OneWriteResponse  # what gunicorn's `wsgi.create` builds, in this process
        gunicorn_util.write_error = write_json_error  # what `handle_error` answers with, in this process
        _freeze(self.cfg)
        super().init_process()

    def timeout_ctx(self) -> _IdleWait:
        return _IdleWait(self)

    def run(self) -> None:
        gevent.spawn(self._close_idle_when_stopping)
        super().run()

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(0.2)
        for greenlet, wait in list(self.idle.items()):
            greenlet.kill(wait, block=False)  # the wait's own exception: it ends quietly


def _freeze(cfg: Any) -> None:
    """Give a worker's config each setting's value as a plain attribute. gunicorn's `Config`
    answers `cfg.<setting>` through `__getattr__` and the setting's `get()`, about 26 times per
    request; a worker's settings never change (a reload forks new workers), and an attribute is
    found before `__getattr__` is tried. Properties of `Config` still take precedence."""
    cfg.__dict__.update({name: setting.get() for name, setting in cfg.settings.items()})


class _IdleWait:
    """The keep-alive wait for a connection's next request, registered so a stop can end it."""

    def __init__(self, worker: ReginaWebWorker) -> None:
        self.worker = worker
        self.timeout = gevent.Timeout(worker.cfg.keepalive, False)

    def __enter__(self) -> None:
        self.timeout.start()
        self.worker.idle[gevent.getcurrent()] = self.timeout

    def __exit__(self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> bool:
        self.worker.idle.pop(gevent.getcurrent(), None)
        return bool(self.timeout.__exit__(typ, value, tb))


def when_ready(server: Any) -> None:
    """Make the master's SIGHUP a registry reload in its workers, not a restart. Warn once when
    `authToken` is set but empty: that turns auth off, which an empty secret in a platform's
    settings (meant as "keep auth") would otherwise do silently."""
    if "auth_token" in _settings.model_fields_set and not _settings.auth_token:
        server.log.warning("authToken (REGINA_AUTH_TOKEN) is set but empty: auth is off, every request is accepted")

    def forward_hup() -> None:
        server.log.info("SIGHUP: agent registry reload (web processes keep running)")
        server.kill_workers(signal.SIGHUP)

    server.handle_hup = forward_hup


def post_worker_init(worker: Any) -> None:
    """In each web process, after the app loaded: SIGHUP = debounced registry reload."""
    worker.wsgi.extensions["regina"].follower.install_sighup()


def worker_exit(server: Any, worker: Any) -> None:
    """In the exiting web process: drop its live gauges from the shared metrics directory (here,
    not in the master's `child_exit`, which would import redis and ssl before the next fork)."""
    from regina.metrics import process_exited

    process_exited(worker.pid)
