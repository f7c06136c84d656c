"""Redis restarting (with its append-only file) loses nothing that was acknowledged."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


@pytest.fixture
def persistent(fake_llm: FakeLLM) -> Iterator[tuple[RedisServer, Cluster]]:
    server = RedisServer(persistent=True).start()
    c = Cluster(server.url, fake_llm.url)
    try:
        yield server, c
    finally:
        c.stop()
        server.close()


def test_chats_continue_after_redis_restarts(persistent: tuple[RedisServer, Cluster]) -> None:
    server, c = persistent
    w = c.start_worker()
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).json()["text"] == "echo: before"

    # When Redis restarts (same port, data kept in its append-only file)
    server.restart()

    # Then the worker re-joins, and the same instance answers with its history intact
    wait_until(lambda: api.get("/healthz", params={"ready": 1}).status_code == 200, timeout=30, what="ready again")

    def chat() -> bool:
        resp = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=20)
        return resp.status_code == 200 and resp.json()["text"] == "echo: after"

    wait_until(chat, timeout=60, interval=1, what="a chat after the restart")
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents[:2] == ["before", "echo: before"] and contents[-2:] == ["after", "echo: after"]
    assert w.alive()
    api.close()
