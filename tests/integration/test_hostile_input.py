"""Hostile request bodies and ids get a clear JSON 4xx, never a 5xx, and leave nothing behind."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster

UNKNOWN = "openai-agent-0123456789abcdef01234567"


def spawn(api: httpx.Client) -> str:
    resp = api.post("/agents/openai-agent/instances")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["instanceId"])


@pytest.mark.parametrize("path", ["chat", "chat/stream", "steer"])
def test_json_nested_thousands_deep_is_400(api: httpx.Client, path: str) -> None:
    iid = spawn(api)
    body = b"[" * 3000 + b"]" * 3000
    resp = api.post(f"/instances/{iid}/{path}", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "nested" in resp.json()["error"]


@pytest.mark.parametrize("path", ["chat", "chat/stream", "steer"])
def test_lone_surrogate_in_a_message_is_400(api: httpx.Client, path: str) -> None:
    iid = spawn(api)
    body = b'{"message": "hi \\ud800 there"}'
    resp = api.post(f"/instances/{iid}/{path}", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "surrogate" in resp.json()["error"]
    assert api.get(f"/instances/{iid}/messages").json() == []


def test_oversized_spawn_body_is_413_and_creates_nothing(api: httpx.Client, cluster: Cluster) -> None:
    r = redis.Redis.from_url(cluster.redis_url)
    before = r.zcard("regina:instances")
    resp = api.post("/agents/openai-agent/instances", content=b"x" * 1_500_000)
    assert resp.status_code == 413, resp.text
    assert "too large" in resp.json()["error"]
    assert r.zcard("regina:instances") == before


def test_resume_of_an_unknown_id_is_404_and_writes_nothing(api: httpx.Client, cluster: Cluster) -> None:
    r = redis.Redis.from_url(cluster.redis_url)
    resp = api.post(f"/instances/{UNKNOWN}/resume", timeout=10)
    assert resp.status_code == 404, resp.text
    assert "not found" in resp.json()["error"]
    assert not r.exists(f"regina:inst:{UNKNOWN}")
    assert api.get(f"/instances/{UNKNOWN}").status_code == 404


def test_the_running_loops_touch_never_creates_a_record(cluster: Cluster) -> None:
    from regina.instances import InstanceStore
    from regina.redis_conn import connect

    store = InstanceStore(connect(cluster.redis_url))
    assert store.touch(UNKNOWN) is False
    assert not store.r.exists(f"regina:inst:{UNKNOWN}")


def test_a_stream_that_breaks_on_an_unexpected_error_still_ends_with_an_error_line(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="one two three four five six", chunk_delay=0.3))
    r = redis.Redis.from_url(cluster.redis_url)
    lines: list[dict[str, object]] = []
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "go"}) as resp:
        run_id = resp.headers["X-Run-Id"]
        for line in resp.iter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if len(lines) == 1:  # a corrupt entry in the run's stream: the web cannot decode it
                r.xadd(f"regina:run:{run_id}:events", {"e": "{not json"}, id="0-999999")
    assert lines[-1]["type"] == "error", lines
    assert "internal error" in str(lines[-1]["error"])
