"""The `Idempotency-Key` header and the run options of a chat body (SPEC §12)."""

from __future__ import annotations

from typing import Any, cast

from flask import request

from regina.errors import BadRequest
from regina.idempotency import body_hash
from regina.runs.service import IdemRequest
from regina.runs.store import WhenBusy

HEADER = "Idempotency-Key"
WHEN_BUSY = ("queue", "steer", "reject")


def idem_request(body: Any) -> IdemRequest | None:
    """The request's Idempotency-Key with its body's hash, or None without the header."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    return IdemRequest(key, body_hash(body))


def when_busy(body: Any) -> WhenBusy:
    """The body's `whenBusy` (default `queue`), or a 400 naming the allowed values."""
    value = body.get("whenBusy", "queue") if isinstance(body, dict) else "queue"
    if value not in WHEN_BUSY:
        raise BadRequest(f"field 'whenBusy' must be one of {', '.join(WHEN_BUSY)}; got {value!r}")
    return cast(WhenBusy, value)
