"""gunicorn settings and hooks for `regina web` (`--config python:gunicorn_conf`).

It lives beside celeryconfig.py, outside the `api` package, whose import would load Flask and
redis into the master before its gevent workers fork and monkey-patch.

- gunicorn's own lines in Regina's log format (regina/logs.py); its access log stays off unless
  `accessLog` is set (a `logconfig_dict` would switch it on for every request).
- SIGHUP reloads the agent registry everywhere instead of restarting the web processes (which
  would cut open streams): the master passes it on to its workers, each of which reloads
  (debounced) and announces the reload to every other process through Redis.
- An exiting web process drops its live gauges from the shared metrics directory.
"""

from __future__ import annotations

import signal
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

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


def when_ready(server: Any) -> None:
    """Make the master's SIGHUP a registry reload in its workers, not a restart."""

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
