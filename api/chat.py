"""Chat endpoints: sync and NDJSON stream."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api import models as m
from api.agents import services
from api.body import json_body
from api.idem import idem_request
from api.openapi import documented, parse_body
from api.runs import stream_run

bp = Blueprint("chat", __name__)


@bp.post("/instances/<iid>/chat")
@documented({"HTTP_200": m.ChatAnswer}, json=m.ChatBody, tag="chat", headers=m.IdempotencyHeaders)
def chat(iid: str) -> Response:
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    result = coord.runs.chat(iid, message, parse_body(m.ChatBody).whenBusy, idem_request(body))
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


@bp.post("/instances/<iid>/chat/stream")
@documented(
    {"HTTP_200": (None, "application/x-ndjson: one event per line")},
    json=m.ChatBody,
    tag="chat",
    headers=m.IdempotencyHeaders,
)
def chat_stream(iid: str) -> Response:
    coord = services().coordinator
    body = json_body()
    message = coord.validate_message(body)
    run_id = coord.runs.start(
        iid, message, stream=True, when_busy=parse_body(m.ChatBody).whenBusy, idem=idem_request(body)
    )
    return stream_run(run_id, 0, iid)
