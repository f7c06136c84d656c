"""`REDIS_URL=unix:///path`: a Redis on the same host over its Unix socket, for state and queues.

redis-py and kombu spell such a URL differently, and kombu's own spelling picks kombu's Redis
transport, not Regina's (workers/broker_url.py); before that, a worker given a `unix://` URL
failed to start its context and a web process answered every spawn with a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM
from tests.harness.ports import free_port
from tests.harness.processes import REGINA, Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until
from workers.broker_url import kombu_broker_url


def test_socket_url_in_kombus_spelling() -> None:
    assert kombu_broker_url("unix:///run/redis.sock") == "regina+socket:///run/redis.sock"
    assert kombu_broker_url("unix:///run/redis.sock?db=3") == "regina+socket:///run/redis.sock?virtual_host=3"
    assert kombu_broker_url("redis://h:1/2") == "redis://h:1/2"


@pytest.fixture
def socket_redis() -> Iterator[RedisServer]:
    with RedisServer(unix_socket=True) as server:
        yield server


def test_chat_and_flower_over_a_unix_socket(socket_redis: RedisServer, fake_llm: FakeLLM) -> None:
    assert socket_redis.url.startswith("unix://")
    cluster = Cluster(socket_redis.url, fake_llm.url)
    try:
        cluster.start_worker()
        web = cluster.start_web()
        with httpx.Client(base_url=web.url, timeout=60) as api:
            spawned = api.post("/agents/openai-agent/instances")
            assert spawned.status_code == 201, spawned.text
            iid = spawned.json()["instanceId"]
            reply = api.post(f"/instances/{iid}/chat", json={"message": "over the socket"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["text"]
        # Flower reads the same Redis over the socket: its Broker tab lists the instance's queue.
        port = free_port()
        cluster._spawn(
            "flower", [REGINA, "flower", "--port", str(port)], cluster.env({"FLOWER_UNAUTHENTICATED_API": "true"})
        )

        def queue_names() -> set[str] | None:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/api/queues/length", timeout=5)
            except httpx.HTTPError:
                return None
            assert resp.status_code == 200, resp.text
            names = {q["name"] for q in resp.json()["active_queues"]}
            return names if f"regina.i.{iid}" in names else None  # once it has asked the worker

        wait_until(queue_names, timeout=60, interval=0.5, what="Flower's queue lengths to list the instance's queue")
        # Every client of the web and the worker (state, queues, events) came over the socket.
        clients = redis.Redis.from_url(socket_redis.url).client_list()
        assert len(clients) > 2 and all(c["addr"].startswith("/") for c in clients), clients
    finally:
        cluster.stop()
