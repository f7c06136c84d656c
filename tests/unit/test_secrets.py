"""Secret values are recognised by their variable's name and redacted everywhere they are shown."""

from __future__ import annotations

import logging

import pytest

from regina.secrets import add_secret, install_log_redaction, redact, redact_any, refresh_secrets, secret_values


def test_secret_values_are_those_of_secret_looking_names() -> None:
    env = {"OPENAI_API_KEY": "sk-abcdefgh", "DB_PASSWORD": "p4ssw0rd!!", "HOME": "/home/someone", "X_TOKEN": "short"}
    assert secret_values(env) == {"sk-abcdefgh", "p4ssw0rd!!"}


def test_redact_replaces_environment_and_added_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "tok-1234567890")
    refresh_secrets()
    add_secret("header-value-abcdef")
    assert redact("a tok-1234567890 b header-value-abcdef c") == "a [redacted] b [redacted] c"
    assert redact_any({"x": ["tok-1234567890", 3]}) == {"x": ["[redacted]", 3]}


def test_log_records_are_redacted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("UNIT_SECRET", "s3cr3t-value-xyz")
    refresh_secrets()
    install_log_redaction()
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("got %s", "s3cr3t-value-xyz")
    assert "s3cr3t-value-xyz" not in caplog.text and "[redacted]" in caplog.text
