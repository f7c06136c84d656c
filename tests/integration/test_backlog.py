"""One instance's backlog is bounded: one run too many is a 429 with Retry-After; commands flow."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

import httpx
import redis

from regina import keys
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def test_a_full_backlog_is_429_with_retry_after_and_commands_still_flow(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    c = make_cluster(REGINA_LIMITS__MAX_QUEUED_RUNS="2").start()
    with httpx.Client(base_url=c.web.url, timeout=60) as api, cf.ThreadPoolExecutor(2) as pool:
        iid = spawn(api)
        fake_llm.push(Reply(text="first", delay=3), Reply(text="second"))
        first = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "one"})
        wait_until(lambda: any(r.last_user_text == "one" for r in fake_llm.requests), 10)
        second = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "two"})
        r = redis.Redis.from_url(c.redis_url)
        wait_until(lambda: r.zcard(keys.instance_runs(iid)) >= 2, 10, what="two runs open")
        resp = api.post(f"/instances/{iid}/chat", json={"message": "three"})
        assert resp.status_code == 429, resp.text
        assert "2 runs" in resp.json()["error"] and int(resp.headers["Retry-After"]) >= 1
        assert api.post(f"/instances/{iid}/heartbeat").status_code == 204
        assert first.result().json()["text"] == "first" and second.result().json()["text"] == "second"
        assert api.post(f"/instances/{iid}/chat", json={"message": "four"}).status_code == 200
