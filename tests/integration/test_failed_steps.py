"""A step that fails with an unexpected error (Redis failing twice in a row) ends its run
`failed` — and loses nothing the run had: the tokens it spent count in the run's and the
instance's usage (`maxTokensPerInstance`), once.

One worker behind a proxy that loses the replies to a chosen script (`LossyProxy`, twice: redis-py
sends a command once more after a connection error, so the call fails though Redis ran it); the
web and the tests talk to Redis directly. The step fails, the Celery task ends its run with an
`error` event (workers/tasks.py → `InstanceHost.end_failed`), as after any unexpected error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
import redis

from regina.runs.context import _HEARTBEAT
from regina.runs.store import _TAKE
from tests.harness.clusters import private_cluster
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.lossy_proxy import LossyProxy
from tests.harness.processes import Cluster
from tests.integration.test_api import spawn

#: The scripts whose replies the worker loses: the take of steering at a step boundary after a
#: tool step, and the run's heartbeat after a model call (at most once a second).
TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest().encode()
HEARTBEAT_SHA = hashlib.sha1(_HEARTBEAT.encode()).hexdigest().encode()


class Failing:
    """The cluster, a client of its web, a direct Redis client and the worker's proxy."""

    def __init__(self, c: Cluster, api: httpx.Client, r: redis.Redis, proxy: LossyProxy) -> None:
        self.c, self.api, self.r, self.proxy = c, api, r, proxy


@pytest.fixture(scope="module")
def failing(fake_llm: FakeLLM) -> Iterator[Failing]:
    with private_cluster(fake_llm.url) as c:
        upstream = urlparse(c.redis_url)
        with (
            LossyProxy(str(upstream.hostname), int(upstream.port or 6379)) as proxy,
            redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
        ):
            c.start_worker(env={"REDIS_URL": proxy.url})
            c.start_web()
            with httpx.Client(base_url=c.web.url, timeout=60) as api:
                yield Failing(c, api, r, proxy)


def _usage(**kw: int) -> dict[str, int]:
    return {"promptTokens": kw.get("prompt", 0), "completionTokens": kw.get("completion", 0)}


def test_a_step_failing_after_a_tool_step_ends_its_run_with_the_tokens_it_spent(
    failing: Failing, fake_llm: FakeLLM
) -> None:
    # Given a chat whose first step runs a tool (its progress, 90 + 30 tokens, recorded with it)
    api = failing.api
    iid = spawn(api)
    fake_llm.push_for(
        "spend then fail",
        Reply(tool_calls=[ToolCall("write_file", {"path": "/spent.txt", "content": "x"})], usage=(90, 30)),
    )
    # When Redis fails the step boundary's take of steering (twice: the step fails)
    failing.proxy.lose_reply_to(TAKE_SHA, times=2)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "spend then fail"})
    assert failing.proxy.lost.is_set(), "the proxy lost no reply"

    # Then the run ends failed with the tokens it spent, in the answer, the run and the instance
    body = resp.json()
    assert resp.status_code == 200 and body["finishReason"] == "error", resp.text
    assert "internal error: ConnectionError" in body["text"]
    assert body["usage"] == _usage(prompt=90, completion=30)
    run = api.get(f"/runs/{body['runId']}").json()
    assert run["status"] == "failed" and run["usage"] == _usage(prompt=90, completion=30), run
    assert api.get(f"/instances/{iid}").json()["usage"] == _usage(prompt=90, completion=30)
    assert [r.last_user_text for r in fake_llm.requests] == ["spend then fail"]  # not asked again
    # And the next chat counts on from there, once
    fake_llm.push_for("and then", Reply(text="fine", usage=(10, 5)))
    assert api.post(f"/instances/{iid}/chat", json={"message": "and then"}).json()["text"] == "fine"
    assert api.get(f"/instances/{iid}").json()["usage"] == _usage(prompt=100, completion=35)


def test_a_one_step_chat_failing_after_its_model_call_counts_that_call(failing: Failing, fake_llm: FakeLLM) -> None:
    # Given a chat whose one model call (70 + 20 tokens, recorded nowhere yet) takes over a second
    api = failing.api
    iid = spawn(api)
    fake_llm.push_for("answer then fail", Reply(text="an answer", usage=(70, 20), delay=1.2))
    # When Redis fails the run's heartbeat after that call (twice: the step fails before its end)
    failing.proxy.lose_reply_to(HEARTBEAT_SHA, times=2)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "answer then fail"})
    assert failing.proxy.lost.is_set(), "the proxy lost no reply"

    # Then the run's end counts the call its step made
    body = resp.json()
    assert resp.status_code == 200 and body["finishReason"] == "error", resp.text
    assert body["usage"] == _usage(prompt=70, completion=20)
    assert api.get(f"/runs/{body['runId']}").json()["usage"] == _usage(prompt=70, completion=20)
    assert api.get(f"/instances/{iid}").json()["usage"] == _usage(prompt=70, completion=20)
