"""Provider failures as one readable `ModelError` (``model provider error: 500 upstream exploded``)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

from regina.errors import ModelError
from regina.secrets import redact

__all__ = ["model_error", "provider_errors", "clean_message"]

_PREFIX = re.compile(r"^\s*(?:litellm\.\w+:|\w+Error:|\w+Exception\s*-)\s*")
_HANDLE_WITH = re.compile(r"\.?\s*Handle with `litellm\.\w+`\.?\s*$")
_BYTES = re.compile(r"^b(['\"])(.*)\1$", re.S)


def clean_message(message: str) -> str:
    """Strip LiteLLM's wrapping ("litellm.X: XError: OpenAIException - …", b'…', "Handle with …")
    and pull `error.message` out of a JSON error body."""
    message = _HANDLE_WITH.sub("", message.strip())
    while True:
        stripped = _PREFIX.sub("", message, count=1)
        if stripped == message:
            break
        message = stripped
    bytes_repr = _BYTES.match(message)
    if bytes_repr:
        message = bytes_repr.group(2)
    try:  # provider bodies are often JSON: {"error": {"message": "..."}}
        body = json.loads(message)
    except ValueError:
        return message
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    return message


def model_error(exc: BaseException) -> ModelError:
    """A readable ModelError: `model provider error: <status> <message>`."""
    if isinstance(exc, ModelError):
        return exc
    status = getattr(exc, "status_code", None)
    message = redact(clean_message(str(getattr(exc, "message", None) or exc or "")))
    if len(message) > 500:
        message = message[:500] + "…"
    head = f"{status} " if isinstance(status, int) else ""
    err = ModelError(f"model provider error: {head}{message or type(exc).__name__}")
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def provider_errors() -> Iterator[None]:
    """Whatever the provider call inside raises leaves as one readable `ModelError`."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise model_error(exc) from exc
