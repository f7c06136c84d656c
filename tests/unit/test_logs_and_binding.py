"""The log line formats, and what `regina web` says when PORT is set on a laptop."""

from __future__ import annotations

import json
import logging

from regina.cli.serve import bind_note
from regina.config import load_settings
from regina.logs import formatter


def _record() -> logging.LogRecord:
    return logging.LogRecord("regina.run", logging.INFO, __file__, 1, "run %s done", ("run-1",), None)


def test_text_lines_carry_level_role_pid_and_logger() -> None:
    line = formatter("worker").format(_record())
    assert " INFO    worker[" in line and "] regina.run: run run-1 done" in line


def test_json_lines_are_one_object_with_the_same_fields() -> None:
    data = json.loads(formatter("web", "json").format(_record()))
    assert data["level"] == "INFO" and data["role"] == "web" and data["logger"] == "regina.run"
    assert data["message"] == "run run-1 done" and isinstance(data["pid"], int) and data["time"]


def test_port_without_a_platform_marker_is_explained() -> None:
    env = {"PORT": "5000"}
    note = bind_note(load_settings(env), env)
    assert note is not None and "REGINA_HOST=0.0.0.0" in note
    platform = {"PORT": "5000", "DYNO": "web.1"}
    assert bind_note(load_settings(platform), platform) is None
    assert bind_note(load_settings({}), {}) is None
    chosen = {"PORT": "5000", "REGINA_HOST": "127.0.0.1"}  # asked for: nothing to explain
    assert bind_note(load_settings(chosen), chosen) is None


def test_a_traceback_in_json_lines_is_redacted_too() -> None:
    import sys

    from regina.secrets import add_secret, install_log_redaction

    secret = "sk-json-traceback-0123456789"
    add_secret(secret)
    install_log_redaction()
    try:
        raise RuntimeError(f"provider said no to key {secret}")
    except RuntimeError:
        record = logging.getLogRecordFactory()(
            "regina.run", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    for fmt in ("text", "json"):
        line = formatter("worker", fmt).format(record)
        assert secret not in line and "[redacted]" in line and "RuntimeError" in line, fmt
