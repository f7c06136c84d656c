"""Secret values are recognised by their variable's name and redacted everywhere they are shown."""

from __future__ import annotations

import logging

import httpx2
import pytest

from regina.mcp.wire import describe
from regina.runtime.tool_call import limit_output
from regina.secrets import (
    add_secret,
    install_log_redaction,
    redact,
    redact_any,
    refresh_secrets,
    secret_values,
    url_secrets,
)


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


def test_url_secrets_are_the_password_and_secret_named_query_values() -> None:
    assert url_secrets("https://bob:pa55word-xyz@mcp.example/sse?api_key=k-123&page=2&Token=t-9") == [
        "pa55word-xyz",
        "k-123",
        "t-9",
    ]
    # Encoded values are secrets as written (an HTTP error prints the URL so) and as decoded.
    assert url_secrets("https://h/sse?api_key=abc%2Bdef%2F123456&token=abc+def123456") == [
        "abc%2Bdef%2F123456",
        "abc+def/123456",
        "abc+def123456",
        "abc def123456",
    ]
    assert url_secrets("http://127.0.0.1:9/mcp") == []
    assert url_secrets("http://[bad/sse") == []  # unparseable: nothing, no error


def test_an_http_error_naming_a_url_is_described_without_its_credential() -> None:
    add_secret("query-credential-12345")
    request = httpx2.Request("GET", "https://mcp.example/sse?api_key=query-credential-12345")
    error = httpx2.HTTPStatusError(f"502 Bad Gateway for url '{request.url}'", request=request, response=None)  # type: ignore[arg-type]
    reason = describe(error)
    assert "query-credential-12345" not in reason and "[redacted]" in reason


def test_tool_results_are_redacted_for_the_model_and_the_event() -> None:
    add_secret("tool-echoed-secret-1")
    shown, content = limit_output({"out": "a tool-echoed-secret-1 b"}, 1000)
    assert shown == {"out": "a [redacted] b"} and "tool-echoed-secret-1" not in content
    assert limit_output("plain text", 1000) == ("plain text", "plain text")


def test_a_long_result_is_scanned_at_its_cut_and_a_secret_across_the_cut_is_not_shown_in_part() -> None:
    add_secret("secret-across-the-cut-0123")
    shown, content = limit_output("x" * 95 + "secret-across-the-cut-0123" + "y" * 10_000, 100)
    assert shown == content and content.startswith("x" * 95 + "[red") and "secre" not in content
    assert "more characters]" in content
