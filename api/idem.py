"""The `Idempotency-Key` header (SPEC §12)."""

from __future__ import annotations

from typing import Any

from flask import request

from regina.idempotency import body_hash
from regina.runs.service import IdemRequest

HEADER = "Idempotency-Key"


def idem_request(body: Any) -> IdemRequest | None:
    """The request's Idempotency-Key with its body's hash, or None without the header."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    return IdemRequest(key, body_hash(body))
