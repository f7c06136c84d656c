"""The chat step's Celery message the web fills in from a template (workers/dispatcher.py,
`step_message`) is the message Celery's `send_task` builds, field for field, but for the ids
that are new per message."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from tests.harness.redis_server import RedisServer
from workers.celery_app import create_app
from workers.dispatcher import CeleryDispatcher


@pytest.fixture
def dispatcher(redis_server: RedisServer) -> CeleryDispatcher:
    app = create_app()
    app.conf.broker_url = redis_server.url
    app.conf.broker_transport = "workers.transport:Transport"
    return CeleryDispatcher(app, redis.Redis.from_url(redis_server.url))


def _ids_out(raw: str) -> tuple[dict[str, Any], list[Any]]:
    msg = json.loads(raw)
    for field in ("id", "root_id"):
        assert msg["headers"][field] == msg["properties"]["correlation_id"]
        msg["headers"][field] = "<id>"
    msg["properties"]["correlation_id"] = msg["properties"]["delivery_tag"] = "<id>"
    body = json.loads(base64.b64decode(msg.pop("body")))
    return msg, body


@pytest.mark.parametrize("message", ["hello", None, "ünïcode \\" + "x" * 100])
def test_the_filled_step_message_is_celerys_own(dispatcher: CeleryDispatcher, message: str | None) -> None:
    dispatcher.step_message("warm", "up", "x")  # the template is built on the first call
    filled = dispatcher.step_message("inst-1", "run-1", message, False)
    built = dispatcher._captured("inst-1", "run-1", message, False)
    assert filled is not None
    assert list(json.loads(filled)) == list(json.loads(built))  # same key order, as kombu dumps it
    assert _ids_out(filled) == _ids_out(built)
    assert json.loads(filled)["headers"]["id"] != json.loads(built)["headers"]["id"]
    msg, body = _ids_out(filled)
    assert body[0] == ["inst-1", "run-1", message, False]
    assert msg["properties"]["delivery_info"]["routing_key"] == "regina.i.inst-1"


@pytest.mark.parametrize("message", ["hello", None, 'quote " back \\ newline \n ünï \u2028 😀'])
def test_the_filled_step_message_is_celerys_text_but_for_its_ids(
    dispatcher: CeleryDispatcher, message: str | None
) -> None:
    """The template is JSON text joined around its varying strings: byte for byte what kombu
    dumps, whatever the strings hold."""
    filled = dispatcher.step_message('inst-"1', "run-\\1", message, True)
    built = dispatcher._captured('inst-"1', "run-\\1", message, True)
    assert filled is not None
    task_id = json.loads(filled)["headers"]["id"]
    built_id = json.loads(built)["headers"]["id"]
    assert filled.replace(task_id, "<id>") == built.replace(built_id, "<id>")
