"""Redis restarting (with its append-only file) loses nothing that was acknowledged."""

from __future__ import annotations

import threading
from collections import Counter
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


@pytest.mark.timeout(300)
def test_redis_restart_mid_load_loses_no_acknowledged_chat(fake_llm: FakeLLM) -> None:
    # Given two workers with storage in Redis (the journal too) and a client chatting in a loop
    server = RedisServer(persistent=True).start()
    c = Cluster(server.url, fake_llm.url, env_overrides={"REGINA_STORAGE__TYPE": "redis", "REGINA_IDLE_TIMEOUT": "0"})
    try:
        w1, w2 = c.start_worker(wait=False), c.start_worker(wait=False)
        c.wait_worker(w1)
        c.wait_worker(w2)
        web = c.start_web()
        api = httpx.Client(base_url=web.url, timeout=60)
        iids = [api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(4)]
        stop = threading.Event()
        results: list[tuple[str, str, int, str]] = []

        def loop() -> None:
            with httpx.Client(base_url=web.url, timeout=60) as client:
                n = 0
                while not stop.is_set():
                    iid, message = iids[n % len(iids)], f"load {n}"
                    try:
                        resp = client.post(f"/instances/{iid}/chat", json={"message": message})
                        text = resp.json().get("text", "") if resp.status_code == 200 else ""
                        results.append((iid, message, resp.status_code, text))
                    except httpx.HTTPError:
                        results.append((iid, message, 0, ""))
                    n += 1

        thread = threading.Thread(target=loop)
        thread.start()
        wait_until(lambda: len(results) >= 10, timeout=60, what="chats before the restart")

        # When Redis restarts mid-load (its append-only file kept)
        server.restart()
        wait_until(lambda: api.get("/healthz", params={"ready": 1}).status_code == 200, timeout=30, what="ready")
        after = len(results)
        wait_until(
            lambda: sum(1 for r in results[after:] if r[2] == 200) >= 10, timeout=90, what="chats after the restart"
        )
        stop.set()
        thread.join(90)

        # Then every chat answered with its echo is in its history exactly once, answer included
        acked = [r for r in results if r[2] == 200 and r[3] == f"echo: {r[1]}"]
        assert len(acked) >= 20
        for iid in iids:
            contents = Counter(m["content"] for m in api.get(f"/instances/{iid}/messages").json())
            for r_iid, message, _status, text in acked:
                if r_iid == iid:
                    assert contents[message] == 1 and contents[text] == 1, (message, contents)
        api.close()
    finally:
        c.stop()
        server.close()
