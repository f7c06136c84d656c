"""Chat endpoints: sync and NDJSON stream."""

from __future__ import annotations

from typing import Any, cast, get_args

from flask import Blueprint, Response, jsonify

from api import models as m
from api.agents import services
from api.body import json_body
from api.idem import idem_request
from api.openapi import documented, parse_body
from api.runs import NDJSON, stream_run
from regina.errors import StillRunning
from regina.runs.store import WhenBusy

bp = Blueprint("chat", __name__)
_WHEN_BUSY = frozenset(get_args(WhenBusy))


#: The answer to an Idempotency-Key retry whose run is gone (regina.errors.Gone).
_GONE = (m.Error, "An Idempotency-Key retry whose run's record has expired: send the request with a new key.")
#: The answer to `whenBusy: reject` while a run is in progress (regina.errors.Busy).
_BUSY = (m.BusyError, "Busy with a run (whenBusy: reject; runId and X-Run-Id name it), or another conflict.")
_EVENTS = "The run's events as NDJSON (application/x-ndjson), one per line, as they are produced."


@bp.post("/instances/<iid>/chat")
@documented(
    {"HTTP_200": m.ChatAnswer, "HTTP_202": m.RunAccepted, "HTTP_409": _BUSY, "HTTP_410": _GONE},
    json=m.ChatBody,
    tag="chat",
    headers=m.IdempotencyHeaders,
    headers_out={200: ["X-Run-Id"], 202: ["X-Run-Id", "Location", "Retry-After"], 409: ["X-Run-Id"]},
)
def chat(iid: str) -> Response | tuple[Response, int]:
    """200 with the answer; 202 when the run outlives `limits.requestTimeout` and goes on: the
    body and `Location` say where to follow it (`GET /runs/<runId>`, `…/events`)."""
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    try:
        result = coord.runs.chat(iid, message, _when_busy(body), idem_request(body))
    except StillRunning as going:
        return _still_running(iid, going)
    resp = jsonify(
        {
            "text": result["text"],
            "usage": result["usage"],
            "runId": result["runId"],
            "finishReason": result["finishReason"],
        }
    )
    resp.headers["X-Run-Id"] = result["runId"]
    return resp


def _when_busy(body: dict[str, Any]) -> WhenBusy:
    """The body's `whenBusy` (its message is checked already); any other value is ChatBody's 400."""
    value = body.get("whenBusy", "queue")
    if isinstance(value, str) and value in _WHEN_BUSY:
        return cast(WhenBusy, value)
    return parse_body(m.ChatBody).whenBusy


def _still_running(iid: str, going: StillRunning) -> tuple[Response, int]:
    run = f"/runs/{going.run_id}"
    resp = jsonify(
        {"runId": going.run_id, "instanceId": iid, "status": going.status, "run": run, "events": f"{run}/events"}
    )
    resp.headers["X-Run-Id"] = going.run_id
    resp.headers["Location"] = run
    resp.headers["Retry-After"] = "1"
    return resp, 202


@bp.post("/instances/<iid>/chat/stream")
@documented(
    {"HTTP_200": (m.RunEvents, _EVENTS), "HTTP_409": _BUSY, "HTTP_410": _GONE},
    json=m.ChatBody,
    tag="chat",
    headers=m.IdempotencyHeaders,
    media={200: NDJSON},
    headers_out={200: ["X-Run-Id"], 409: ["X-Run-Id"]},
)
def chat_stream(iid: str) -> Response:
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    run_id, batches = coord.runs.start_following(
        iid, message, stream=True, when_busy=_when_busy(body), idem=idem_request(body)
    )
    return stream_run(run_id, 0, batches)
