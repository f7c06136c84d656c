"""Every error becomes `{"error": "<clear message>"}` with a fitting status (SPEC §4)."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify, request
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

from regina.errors import (
    BadRequest,
    Busy,
    Conflict,
    Gone,
    NotFound,
    PayloadTooLarge,
    ReginaError,
    RequestTimeout,
    StaleEpoch,
    StorageError,
    TooManyRequests,
    Unavailable,
    Unprocessable,
    VFSError,
)
from regina.outage import Outage
from regina.secrets import redact

log = logging.getLogger("regina.api")

#: The HTTP status of each core error (the nearest class in an error's MRO wins); any other
#: ReginaError is a 500. The core's errors know nothing of HTTP.
STATUS: dict[type[ReginaError], int] = {
    BadRequest: 400,
    VFSError: 400,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,  # an Idempotency-Key's run whose record expired: retrying the same key cannot help
    StaleEpoch: 409,
    PayloadTooLarge: 413,
    RequestTimeout: 408,
    TooManyRequests: 429,
    Unprocessable: 422,
    Unavailable: 503,
    StorageError: 503,  # backup storage down or refusing: a dependency outage, try again
}


def status_of(exc: ReginaError) -> int:
    """The HTTP status for a core error: its class's entry in STATUS, else its nearest base's."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(message: str, status: int) -> tuple[Response, int]:
    """The JSON error body."""
    return jsonify({"error": redact(message)}), status


def describe_unexpected(exc: Exception) -> str:
    """What a client is told about an error nobody raised on purpose: its kind, never its text
    (which may hold data from anywhere); Redis outages are named as such."""
    if isinstance(exc, redis.TimeoutError):
        return "Redis did not answer in time (TimeoutError); try again"
    if isinstance(exc, redis.ConnectionError):
        return f"Redis is unreachable ({exc.__class__.__name__}); try again"
    if isinstance(exc, OperationalError):
        return f"the message broker is unreachable ({exc.__class__.__name__}); try again"
    return f"internal error: {exc.__class__.__name__} (details in the server log)"


#: Blueprints each successful answer of which read or wrote Redis, as `/healthz`'s does: a 2xx of
#: one says Redis is back (agents' are answered from memory, `/metrics` also without Redis).
_NEED_REDIS = frozenset({"instances", "chat", "runs"})


def register_error_handlers(app: Flask) -> None:
    """Map Regina errors and Werkzeug's HTTP errors to JSON."""

    @app.errorhandler(ReginaError)
    def _regina(exc: ReginaError) -> tuple[Response, int]:
        if isinstance(exc, Busy):  # the running run, for a client to follow or cancel
            resp = jsonify({"error": exc.message, "runId": exc.run_id})
            resp.headers["X-Run-Id"] = exc.run_id
            return resp, status_of(exc)
        if isinstance(exc, TooManyRequests):
            resp, status = error_response(exc.message, status_of(exc))
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp, status
        return error_response(exc.message, status_of(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            return error_response(f"request body too large (limit {limit} bytes)", 413)
        if status == 404:
            return error_response("no such endpoint", 404)
        if status == 405:
            return error_response(f"method not allowed: {exc.description}", 405)
        return error_response(exc.description or exc.name, status)

    _register_redis_outage(app)

    @app.errorhandler(OperationalError)
    def _broker_down(exc: OperationalError) -> tuple[Response, int]:
        log.warning("broker unavailable: %r", exc)
        return error_response(describe_unexpected(exc), 503)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(describe_unexpected(exc), 500)


def _register_redis_outage(app: Flask) -> None:
    """Redis errors are a 503 naming Redis. While Redis is down every request fails alike: one
    WARNING when that starts, one every 30 s while it lasts (with the count of those not logged),
    one INFO when a request that needs Redis succeeds again; not a line per request."""
    outage = Outage("web requests", log, then="answering 503")

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def _redis_down(exc: redis.RedisError) -> tuple[Response, int]:
        outage.failed(exc)
        return error_response(describe_unexpected(exc), 503)

    @app.after_request
    def _redis_back(response: Response) -> Response:
        needs_redis = request.blueprint in _NEED_REDIS or request.endpoint == "health.healthz"
        if outage.failures and response.status_code < 300 and needs_redis:
            outage.ok()
        return response
