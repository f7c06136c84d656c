"""Idempotency-Key retries (SPEC §12) answer what the first request got, or say at once why they
cannot: never a wait on a run that does not exist, never an instance woken for it."""

from __future__ import annotations

import json
import time

import httpx
import redis

from regina import idempotency
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.integration.test_runs import Stream, spawn


def _key(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_a_steered_chat_keeps_its_run_as_long_as_its_key_and_a_gone_run_is_a_410_at_once(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    iid = spawn(api)
    fake_llm.push(Reply(text="the long answer", delay=1.5))
    busy = Stream(api, iid, "a long one")
    run0 = busy.id()
    key = _key("steered")
    body = {"message": "also this", "whenBusy": "steer"}
    first = api.post(f"/instances/{iid}/chat", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    assert first.json()["runId"] == run0  # the answer of the run it steered
    busy.until("finish")

    # The steered run answers the key's retries: its record and events live as long as the key.
    key_ttl = r.ttl(idempotency.redis_key("chat", iid, key))
    assert key_ttl > 3600
    assert r.ttl(f"regina:run:{run0}") >= key_ttl
    assert r.ttl(f"regina:run:{run0}:events") >= key_ttl
    again = api.post(f"/instances/{iid}/chat", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json() == first.json()

    # Should the run's record go anyway (evicted, or written before runs kept their keys' time),
    # a retry is told at once, and the suspended instance is not woken for it.
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    r.delete(f"regina:run:{run0}", f"regina:run:{run0}:events")
    started = time.monotonic()
    gone = api.post(f"/instances/{iid}/chat", json=body, headers={"Idempotency-Key": key}, timeout=10)
    assert gone.status_code == 410, gone.text
    assert run0 in gone.json()["error"] and "expired" in gone.json()["error"]
    assert time.monotonic() - started < 5
    assert api.get(f"/instances/{iid}").json()["status"] == "suspended"


def test_a_streamed_chat_retried_after_its_run_expired_is_a_410_at_once(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    iid = spawn(api)
    headers = {"Idempotency-Key": _key("stream")}
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "hi"}, headers=headers) as resp:
        run_id = resp.headers["X-Run-Id"]
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert events[-1]["type"] == "finish"
    r.delete(f"regina:run:{run_id}", f"regina:run:{run_id}:events")
    started = time.monotonic()
    gone = api.post(f"/instances/{iid}/chat/stream", json={"message": "hi"}, headers=headers, timeout=10)
    assert gone.status_code == 410, gone.text
    assert run_id in gone.json()["error"]
    assert time.monotonic() - started < 5
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/instances/{iid}/chat", "/instances/{iid}/chat/stream"):
        assert "410" in paths[path]["post"]["responses"], path


def test_chat_stream_and_steer_retried_after_their_instance_was_deleted_answer_the_same(
    api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """The same key and body within 24 h answer the same (SPEC §12), also once the instance is
    gone; a request without a key, or with a new one, is still a 404."""
    iid = spawn(api)
    chat_key = {"Idempotency-Key": _key("chat")}
    steer_key = {"Idempotency-Key": _key("steer")}
    stream_key = {"Idempotency-Key": _key("stream")}
    chat = api.post(f"/instances/{iid}/chat", json={"message": "remember"}, headers=chat_key)
    steer = api.post(f"/instances/{iid}/steer", json={"message": "later"}, headers=steer_key)
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "go"}, headers=stream_key) as resp:
        streamed = [json.loads(line) for line in resp.iter_lines() if line]
    assert chat.status_code == steer.status_code == 200 and streamed[-1]["type"] == "finish"
    assert api.delete(f"/instances/{iid}").status_code == 204

    again = api.post(f"/instances/{iid}/chat", json={"message": "remember"}, headers=chat_key, timeout=10)
    assert again.status_code == 200 and again.json() == chat.json(), again.text
    steer_again = api.post(f"/instances/{iid}/steer", json={"message": "later"}, headers=steer_key)
    assert steer_again.status_code == 200 and steer_again.json() == steer.json(), steer_again.text
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "go"}, headers=stream_key) as resp:
        assert resp.status_code == 200
        assert [json.loads(line) for line in resp.iter_lines() if line] == streamed
    mismatch = api.post(f"/instances/{iid}/chat", json={"message": "something else"}, headers=chat_key)
    assert mismatch.status_code == 422, mismatch.text
    for headers in ({}, {"Idempotency-Key": _key("new")}):
        assert api.post(f"/instances/{iid}/chat", json={"message": "remember"}, headers=headers).status_code == 404
        assert api.post(f"/instances/{iid}/steer", json={"message": "later"}, headers=headers).status_code == 404
    assert len(fake_llm.requests) == 2  # the two chats' model calls, once each
