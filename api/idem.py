"""The `Idempotency-Key` header (SPEC §12)."""

from __future__ import annotations

from typing import Any

from flask import request

from regina.idempotency import body_hash
from regina.runs.service import IdemRequest

HEADER = "Idempotency-Key"


def idem_key() -> str | None:
    """The request's Idempotency-Key (None without the header). WSGI hands headers over as
    latin-1: a UTF-8 key is read (counted, hashed) as its characters; any other as its bytes."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    try:
        return key.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return key


def idem_request(body: Any) -> IdemRequest | None:
    """The request's Idempotency-Key with its body's hash, or None without the header."""
    key = idem_key()
    return None if key is None else IdemRequest(key, body_hash(body))
