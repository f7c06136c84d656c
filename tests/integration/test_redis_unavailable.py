"""A Redis that does not answer is a 503 that names Redis, not `500 internal error: TimeoutError`."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from api.services import Services
from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.registry_sync import RegistryFollower
from tests.harness.ports import free_port
from tests.harness.redis_server import RedisServer
from workers.celery_app import app as celery_app
from workers.dispatcher import CeleryDispatcher

AGENTS = str(Path(__file__).resolve().parents[1] / "agents")


def _client_for(url: str) -> FlaskClient:
    settings = Settings(redis=url, agents_dir=AGENTS)
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    coordinator = Coordinator(settings, registry, client, CeleryDispatcher(celery_app, client), None)
    follower = RegistryFollower(client, registry)
    return create_app(settings, Services(settings, registry, client, coordinator, follower)).test_client()


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a Redis stuck or restarting)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0?socket_timeout=0.3"
    sock.close()


def test_redis_timeout_is_503_naming_redis(silent_redis: str) -> None:
    web = _client_for(silent_redis)
    resp = web.get("/instances/openai-agent-0123456789abcdef01234567")
    assert resp.status_code == 503, resp.text
    assert "Redis did not answer in time" in resp.json["error"]


def test_redis_unreachable_is_503_naming_redis() -> None:
    web = _client_for(f"redis://127.0.0.1:{free_port()}/0")
    resp = web.post("/instances/openai-agent-0123456789abcdef01234567/heartbeat")
    assert resp.status_code == 503, resp.text
    assert "Redis is unreachable" in resp.json["error"]


def test_a_blocking_wait_longer_than_redis_pys_default_socket_timeout_is_not_an_error(
    redis_server: RedisServer,
) -> None:
    # redis-py 8 gives every socket a 5 s read timeout by default, which cut the web's wait for a
    # worker's reply (up to workerReplyTimeout, 30 s) into a 503 "Redis did not answer in time"
    client = connect(redis_server.url)
    started = time.monotonic()
    assert client.blpop(["regina:test:never-pushed"], timeout=6) is None
    assert time.monotonic() - started >= 5.5
    client.close()


def test_an_outage_is_one_warning_then_one_line_when_redis_is_back(caplog: pytest.LogCaptureFixture) -> None:
    """Every request fails alike while Redis is down: one WARNING, not one per request; the first
    request that needs Redis and succeeds says it is back."""
    server = RedisServer().start()
    try:
        web = _client_for(server.url)
        iid = "openai-agent-0123456789abcdef01234567"
        server.stop()
        caplog.set_level(logging.INFO, logger="regina.api")
        for _ in range(5):
            assert web.get(f"/instances/{iid}").status_code == 503
        down = [r for r in caplog.records if r.name == "regina.api" and "Redis is unreachable" in r.getMessage()]
        assert len(down) == 1, [r.getMessage() for r in caplog.records]
        assert down[0].levelno == logging.WARNING and "answering 503" in down[0].getMessage()
        assert web.get("/agents").status_code == 200  # from memory: says nothing of Redis
        assert not [r for r in caplog.records if "reachable again" in r.getMessage()]
        server.start()
        assert web.get("/healthz").status_code == 200
        back = [r for r in caplog.records if r.name == "regina.api" and "reachable again" in r.getMessage()]
        assert len(back) == 1
        assert web.get(f"/instances/{iid}").status_code == 404
        assert web.get(f"/instances/{iid}").status_code == 404
        assert len([r for r in caplog.records if "reachable again" in r.getMessage()]) == 1
    finally:
        server.close()
