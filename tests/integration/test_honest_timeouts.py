"""A command the worker is still carrying out is not reported as failed."""

from __future__ import annotations

import concurrent.futures as cf
import json
from collections.abc import Callable

import httpx
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def test_a_suspend_slower_than_the_reply_timeout_is_accepted_not_failed(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    c = make_cluster(REGINA_LIMITS__WORKER_REPLY_TIMEOUT="1").start()
    with httpx.Client(base_url=c.web.url, timeout=60) as api, cf.ThreadPoolExecutor(1) as pool:
        iid = spawn(api)
        fake_llm.push(Reply(text="slow answer", delay=4))
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "take your time"})
        wait_until(lambda: any(r.last_user_text == "take your time" for r in fake_llm.requests), 10)
        # The suspend waits for the running step (4 s): longer than the 1 s reply timeout.
        resp = api.post(f"/instances/{iid}/suspend")
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"instanceId": iid, "status": "suspending"}
        answer = chat.result()
        assert answer.json().get("text") == "slow answer", answer.text
        wait_until(lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", 20)


def test_a_sync_chat_longer_than_the_request_timeout_is_accepted_and_its_run_followed_to_the_end(
    make_cluster: object, fake_llm: FakeLLM
) -> None:
    # Given a web whose sync chats wait at most 1 s, and a model that takes 4 s
    c: Cluster = make_cluster(  # type: ignore[operator]
        REGINA_LIMITS__REQUEST_TIMEOUT="1", REGINA_LIMITS__PLACEMENT_WAIT="2"
    )
    worker = c.start_worker()
    web = c.start_web()
    fake_llm.push_for("slow but healthy", Reply(text="worth the wait", delay=4))
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        # When a sync chat outlives it
        resp = api.post(f"/instances/{iid}/chat", json={"message": "slow but healthy"})
        # Then it is accepted, not failed: 202 with the run and where to follow it
        assert resp.status_code == 202, resp.text
        body = resp.json()
        run_id = body["runId"]
        assert body == {
            "runId": run_id,
            "instanceId": iid,
            "status": "running",
            "run": f"/runs/{run_id}",
            "events": f"/runs/{run_id}/events",
        }
        assert resp.headers["Location"] == f"/runs/{run_id}" and resp.headers["X-Run-Id"] == run_id
        # And its events, followed past the same 1 s, end with the answer
        with api.stream("GET", body["events"]) as events:
            lines = [json.loads(line) for line in events.iter_lines() if line]
        assert lines[-1]["type"] == "finish" and lines[-1]["text"] == "worth the wait", lines[-1]
        assert api.get(body["run"]).json()["status"] == "finished"
        # And an instance nobody can serve (its only worker gone) still answers 503, not 202
        worker.kill()
        r = redis.Redis.from_url(c.redis_url)
        wait_until(lambda: not r.exists(f"regina:member:{worker.member_id}"), 10, what="the member key to expire")
        late = api.post(f"/instances/{iid}/chat", json={"message": "nobody serves"})
        assert late.status_code == 503, late.text


def test_a_chat_that_could_not_be_queued_does_not_hold_its_idempotency_key(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    """The retry of a chat answered 503 (no worker to serve it) runs the chat once a worker is
    back: its Idempotency-Key did no work, so it names no run to answer again."""
    c = make_cluster(REGINA_LIMITS__REQUEST_TIMEOUT="4", REGINA_LIMITS__PLACEMENT_WAIT="1")
    worker = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        worker.kill()
        r = redis.Redis.from_url(c.redis_url)
        wait_until(lambda: not r.exists(f"regina:member:{worker.member_id}"), 10, what="the member key to expire")
        headers = {"Idempotency-Key": "once-nobody-served"}
        first = api.post(f"/instances/{iid}/chat", json={"message": "hello"}, headers=headers)
        assert first.status_code == 503, first.text
        c.start_worker()
        retry = api.post(f"/instances/{iid}/chat", json={"message": "hello"}, headers=headers)
        assert retry.status_code == 200, retry.text
        assert retry.json()["text"] == "echo: hello" and retry.json()["finishReason"] == "stop"
        again = api.post(f"/instances/{iid}/chat", json={"message": "hello"}, headers=headers)
        assert again.json()["runId"] == retry.json()["runId"]  # from now on, this run answers it
