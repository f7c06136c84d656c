"""Chat endpoints: sync, NDJSON stream, and re-attaching to a run's events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context

from api.agents import services
from api.body import json_body
from api.errors import describe_unexpected
from regina.errors import BadRequest, ReginaError
from regina.runtime.events import to_ndjson

log = logging.getLogger("regina.api")

bp = Blueprint("chat", __name__)

NDJSON = "application/x-ndjson"


@bp.post("/instances/<iid>/chat")
def chat(iid: str) -> Response:
    coord = services().coordinator
    message = coord.validate_message(json_body())
    result = coord.chat(iid, message)
    resp = jsonify({"text": result["text"], "usage": result["usage"]})
    resp.headers["X-Run-Id"] = result["runId"]
    return resp


def _relay(events: Iterator[dict[str, Any]], run_id: str) -> Iterator[bytes]:
    """The run's events as NDJSON; whatever goes wrong, the last line is `finish` or `error`."""
    try:
        for event in events:
            yield to_ndjson(event)
    except ReginaError as exc:
        # The status line is sent already: report the failure as the last event.
        yield to_ndjson({"type": "error", "error": exc.message, "runId": run_id})
    except Exception as exc:
        log.exception("stream of run %s broke", run_id)
        yield to_ndjson({"type": "error", "error": describe_unexpected(exc), "runId": run_id})


def _stream(run_id: str, after: int, instance_id: str | None = None) -> Response:
    coord = services().coordinator
    events = (
        coord.follow_run(run_id, after=after)
        if instance_id is None
        else coord.follow_known_run(run_id, instance_id, after)
    )
    resp = Response(stream_with_context(_relay(events, run_id)), mimetype=NDJSON)
    resp.headers["X-Run-Id"] = run_id
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


@bp.post("/instances/<iid>/chat/stream")
def chat_stream(iid: str) -> Response:
    coord = services().coordinator
    message = coord.validate_message(json_body())
    run_id = coord.start_run(iid, message)
    return _stream(run_id, 0, iid)


@bp.get("/runs/<run_id>/events")
def run_events(run_id: str) -> Response:
    """Re-attach to a run: every event after `?after=<seq>` (default: from the start)."""
    raw = request.args.get("after", "0")
    if not raw.isdigit():
        raise BadRequest(f"query parameter 'after' must be a non-negative integer, got {raw!r}")
    return _stream(run_id, int(raw))


@bp.get("/runs/<run_id>")
def run_status(run_id: str) -> Response:
    from regina.relay import run_info

    info = run_info(services().client, run_id)
    if not info:
        from regina.errors import NotFound

        raise NotFound(f"run {run_id!r} not found (unknown or expired)")
    return jsonify({"runId": run_id, **info})
