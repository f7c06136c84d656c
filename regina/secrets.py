"""Keep secret values out of everything Regina shows: responses, run events, the model, logs (SPEC §10).

A secret is the value of an environment variable named like one (`*KEY*`, `*TOKEN*`,
`*SECRET*`, `*PASSWORD*`, `*CREDENTIAL*`, `*AUTH*`), plus any value registered with
`add_secret` (MCP header values and the credentials in MCP server URLs, the API bearer token).
`redact()` replaces each occurrence with
`[redacted]`; the API's error bodies, agent listings, run events, model errors and every log
record pass through it. Short values (under 8 characters) are not treated as secrets: they would
redact ordinary words.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from regina.config import environment

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 8
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)

_lock = threading.Lock()
_extra: set[str] = set()
_pattern: re.Pattern[str] | None = None
_NOTHING = re.compile(r"(?!)")


def is_secret_name(name: str) -> bool:
    """True when an environment variable's name says it holds a secret (see the module docstring)."""
    return _SECRET_NAME.search(name) is not None


def secret_values(environ: Mapping[str, str]) -> set[str]:
    """Values of the environment variables whose names say they hold a secret."""
    return {v for k, v in environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}


def add_secret(value: str | None) -> None:
    """Treat `value` as a secret from now on (header values, tokens from config)."""
    global _pattern
    if value and len(value) >= MIN_SECRET_LENGTH and value not in _extra:
        with _lock:
            _extra.add(value)
            _pattern = None


def known_secrets() -> tuple[str, ...]:
    """Every value this process redacts (the environment's secrets and the registered ones)."""
    with _lock:
        extra = set(_extra)
    return tuple(sorted(secret_values(environment()) | extra))


#: What a tool process redacts with: a salt and, by length, the salted digests of the worker's
#: secrets (`secret_digests`). Not the values: tool code runs in that process.
Digests = tuple[bytes, dict[int, frozenset[bytes]]]
_digests: Digests | None = None


def _digest(salt: bytes, text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=salt, digest_size=16).digest()


def secret_digests() -> Digests:
    """This process's secrets as keyed digests under a fresh random salt, by length: enough to
    find them in a text (every substring of each length is hashed and looked up), never enough
    to learn them. A tool process gets these, not `known_secrets()`."""
    salt = os.urandom(16)
    by_length: dict[int, set[bytes]] = {}
    for value in known_secrets():
        by_length.setdefault(len(value), set()).add(_digest(salt, value))
    return salt, {n: frozenset(d) for n, d in by_length.items()}


def use_secret_digests(digests: Digests) -> None:
    """Redact, besides this process's own secrets, the texts `digests` stands for."""
    global _digests
    _digests = digests if digests[1] else None


def _redact_digests(text: str, digests: Digests) -> str:
    """`text` with every substring whose digest is one of `digests` replaced, longest first."""
    salt, by_length = digests
    for n in sorted(by_length, reverse=True):
        wanted = by_length[n]
        if len(text) < n:
            continue
        out: list[str] = []
        i = start = 0
        while i <= len(text) - n:
            if _digest(salt, text[i : i + n]) in wanted:
                out.append(text[start:i])
                out.append(REDACTED)
                i = start = i + n
            else:
                i += 1
        if out:
            text = "".join(out) + text[start:]
    return text


def url_secrets(url: str) -> list[str]:
    """The credentials a URL carries: its password (`https://user:pw@host`) and the values of
    query parameters named like a secret (`?api_key=…`, `?token=…`). An MCP server's URL is
    written into connection errors (an HTTP library's "… for url '…'"), which reach the model."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [password] if password else []
    for pair in parts.query.split("&"):
        name, _, raw = pair.partition("=")
        if raw and is_secret_name(unquote_plus(name)):
            # As written (an HTTP library prints the URL encoded) and decoded (as a server sees it).
            found += dict.fromkeys([raw, unquote_plus(raw)])
    return found


def refresh_secrets() -> None:
    """Re-read the environment's secrets (they are read once, at first use)."""
    global _pattern
    with _lock:
        _pattern = None


def _current() -> re.Pattern[str] | None:
    global _pattern
    pattern = _pattern
    if pattern is None:
        # Longest first, so a secret that contains another is replaced whole.
        alternatives = sorted(secret_values(environment()) | _extra, key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else _NOTHING
        with _lock:
            _pattern = pattern
    return None if pattern is _NOTHING else pattern


def redact(text: str) -> str:
    """`text` with every secret value replaced by `[redacted]`."""
    pattern = _current()
    if pattern is not None and text:
        text = pattern.sub(REDACTED, text)
    digests = _digests
    if digests is not None and text:
        text = _redact_digests(text, digests)
    return text


def redact_with(text: str, environ: Mapping[str, str]) -> str:
    """`redact(text)`, and the secrets of `environ` too: a definition is expanded from an
    environment that need not be this process's (the registry may be given its own)."""
    text = redact(text)
    for value in sorted(secret_values(environ), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def redact_any(value: Any) -> Any:
    """`redact` applied to every string inside lists and dicts."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_any(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    return value


class _RedactingRecord(logging.LogRecord):
    """A log record whose message and traceback text are redacted when formatted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and not self.exc_text:
            self.exc_text = redact(logging.Formatter().formatException(self.exc_info))

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return redact(super().getMessage())


def install_log_redaction() -> None:
    """Make every log record of this process redact secrets (idempotent)."""
    if logging.getLogRecordFactory() is not _RedactingRecord:
        logging.setLogRecordFactory(_RedactingRecord)
