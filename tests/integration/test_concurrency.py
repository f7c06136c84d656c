"""Many concurrent chats on one worker: no broker-pool exhaustion, no lost acks (issue 15 item 19).

kombu's Redis channel pool held 10 connections; at 64 concurrent chats with a 200 ms model the
steps' acks raised `MaxConnectionsError` and the consumer lost its broker connection.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow


def _chat_all(url: str, iids: list[str], tag: str) -> list[str]:
    """One sync chat per instance, all at once; returns the problems seen (empty = all good)."""

    def one(client: httpx.Client, iid: str) -> str | None:
        try:
            r = client.post(f"/instances/{iid}/chat", json={"message": f"{tag} {iid}"})
        except httpx.HTTPError as exc:
            return f"{iid}: {exc!r}"
        if r.status_code != 200:
            return f"{iid}: {r.status_code} {r.text[:200]}"
        if r.json()["text"] != f"echo: {tag} {iid}":
            return f"{iid}: wrong answer {r.json()['text']!r}"
        return None

    limits = httpx.Limits(max_connections=len(iids) + 8, max_keepalive_connections=len(iids) + 8)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client, cf.ThreadPoolExecutor(len(iids)) as pool:
        return [p for p in pool.map(lambda iid: one(client, iid), iids) if p]


@pytest.mark.timeout(420)
def test_64_and_256_concurrent_chats_with_a_slow_model(make_cluster: Callable[..., Cluster], fake_llm: FakeLLM) -> None:
    fake_llm.default = lambda req: Reply(text=f"echo: {req.last_user_text}", delay=0.2)
    c = make_cluster(REGINA_CONCURRENCY="256")
    worker = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iids = [api.post("/agents/openai-agent/instances", json={}).json()["instanceId"] for _ in range(256)]
    problems: list[str] = []
    for n in (64, 256, 256):
        problems += _chat_all(web.url, iids[:n], f"round{n}")
    assert problems == []
    assert "MaxConnectionsError" not in worker.log()
    assert "cannot be acknowledged" not in worker.log()
    # Every answered step was acknowledged: nothing is left for a restore to redeliver.
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    wait_until(lambda: r.hlen("unacked") == 0, timeout=30, what="kombu's unacked index to empty")
    r.close()


def test_a_step_redelivered_after_its_run_finished_is_dropped(
    cluster: Cluster, api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """What a lost ack leads to: the finished run's step back on the queue, or one whose run expired."""
    from workers.celery_app import app
    from workers.dispatcher import CeleryDispatcher

    iid = api.post("/agents/openai-agent/instances", json={}).json()["instanceId"]
    done = api.post(f"/instances/{iid}/chat", json={"message": "first"})
    run_id = done.headers["X-Run-Id"]
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    events_before = r.xrange(f"regina:run:{run_id}:events")
    asked = len(fake_llm.requests)
    app.conf.broker_url = cluster.redis_url
    dispatcher = CeleryDispatcher(app, r)
    dispatcher.enqueue_step(iid, run_id, "first", False)  # as a restore of the unacked step would
    dispatcher.enqueue_step(iid, "run-unknown-or-expired", "ghost", False)
    # A chat after them answers normally: the two redelivered steps ran (and were dropped) first.
    assert api.post(f"/instances/{iid}/chat", json={"message": "second"}).json()["text"] == "echo: second"
    assert [q.last_user_text for q in fake_llm.requests[asked:]] == ["second"]
    assert r.xrange(f"regina:run:{run_id}:events") == events_before
    assert r.hget(f"regina:run:{run_id}", "status") == "finished"
    assert not r.exists("regina:run:run-unknown-or-expired")
    r.close()
