"""Run endpoints (SPEC §12): show, cancel, and re-attach to a run's events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api import models as m
from api.agents import services
from api.errors import describe_unexpected
from api.openapi import documented
from regina.errors import BadRequest, ReginaError
from regina.runtime.events import to_ndjson

log = logging.getLogger("regina.api")

bp = Blueprint("runs", __name__)

NDJSON = "application/x-ndjson"


def _relay(batches: Iterator[list[dict[str, Any]]], run_id: str) -> Iterator[bytes]:
    """The run's events as NDJSON; whatever goes wrong, the last line is `finish` or `error`.

    An empty first chunk makes the server send the status line and headers (`X-Run-Id`) at once,
    so a client knows the run id (to cancel it) before the model's first token. The events of
    one read go out in one chunk (one send, not one per event).
    """
    try:
        yield b""
        for batch in batches:
            yield b"".join([to_ndjson(event) for event in batch])
    except ReginaError as exc:
        # The status line is sent already: report the failure as the last event.
        yield to_ndjson({"type": "error", "error": exc.message, "runId": run_id})
    except Exception as exc:
        log.exception("stream of run %s broke", run_id)
        yield to_ndjson({"type": "error", "error": describe_unexpected(exc), "runId": run_id})
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # also when the client left before the first event: its connection back


def stream_run(run_id: str, after: int, batches: Iterator[list[dict[str, Any]]] | None = None) -> Response:
    """An NDJSON response of the run's events after seq `after` (or `batches`, a follow of the
    run), followed live to the end."""
    if batches is None:
        batches = services().coordinator.runs.follow_batches(run_id, after=after)
    resp = Response(stream_with_context(_relay(batches, run_id)), mimetype=NDJSON)
    resp.headers["X-Run-Id"] = run_id
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.get("/runs/<run_id>/events")
@documented(
    {"HTTP_200": (m.RunEvents, "The run's events after `after` as NDJSON (application/x-ndjson), one per line.")},
    query=m.EventsQuery,
    tag="runs",
    media={200: NDJSON},
    headers_out={200: ["X-Run-Id"]},
)
def run_events(run_id: str) -> Response:
    """Re-attach to a run: every event after `?after=<seq>` (default: from the start)."""
    raw = request.args.get("after", "0")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise BadRequest(f"query parameter 'after' must be an integer from 0 to 10^18, got {raw!r}")
    return stream_run(run_id, int(raw))


@bp.get("/runs/<run_id>")
@documented({"HTTP_200": m.Run}, tag="runs")
def run_status(run_id: str) -> Response:
    return jsonify(services().coordinator.runs.show(run_id))


@bp.post("/runs/<run_id>/cancel")
@documented({"HTTP_202": m.CancelAnswer, "HTTP_200": m.CancelAnswer}, tag="runs")
def cancel(run_id: str) -> tuple[Response, int]:
    cancelled, status = services().coordinator.runs.cancel(run_id)
    if cancelled:
        return jsonify({"cancelled": True}), 202
    return jsonify({"cancelled": False, "status": status}), 200
