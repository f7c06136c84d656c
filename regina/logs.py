"""One log format for every Regina process: time, level, role[pid], logger, message.

`configure(role, level, fmt)` sets up the root logger of a web or worker process; `formatter`
gives the same format to loggers configured elsewhere (gunicorn's). `fmt` is `text` (for a
terminal) or `json` (one object per line with `time`, `level`, `role`, `pid`, `logger`,
`message`, for platforms that parse logs).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from regina.secrets import redact

TEXT_FORMAT = "%(asctime)s %(levelname)-7s {role}[%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s"
_JSON_RENAME = {"asctime": "time", "levelname": "level", "process": "pid", "name": "logger"}
_configured: tuple[str, str, str] | None = None


def formatter(role: str, fmt: str = "text") -> logging.Formatter:
    """The formatter of every Regina log line for a process of this role."""
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        class RedactingJsonFormatter(JsonFormatter):
            """python-json-logger formats a traceback itself (not the record's redacted text)."""

            def formatException(self, ei: Any) -> Any:  # noqa: N802 - logging's name
                text = super().formatException(ei)
                return redact(text) if isinstance(text, str) else [redact(line) for line in text]

        return RedactingJsonFormatter(JSON_FIELDS, rename_fields=_JSON_RENAME, static_fields={"role": role})
    return logging.Formatter(TEXT_FORMAT.format(role=role))


def configured() -> tuple[str, str, str] | None:
    """(role, level, fmt) of this process's `configure`, if it was called: a tool process
    (`useProcesses`) logs the same way as its worker."""
    return _configured


def configure(role: str, level: str = "INFO", fmt: str = "text") -> None:
    """Log from this process in Regina's format to stderr (replaces the root's handlers)."""
    global _configured
    _configured = (role, level, fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(role, fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The format has no thread, process name or source position: skip looking them up for every
    # record (logging's documented switches). Under gevent a thread name is a dummy thread built
    # per greenlet: a worker's log line per run cost twice as much with it.
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # LiteLLM and httpx log every request at INFO: keep them to warnings.
    for noisy in ("httpx", "LiteLLM", "litellm"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
