"""A step that fails with an unexpected error (Redis failing twice in a row) ends its run
`failed` — and loses nothing the run had: the tokens it spent count in the run's and the
instance's usage (`maxTokensPerInstance`), once; the steering it took and never saved to its
transcript goes back to the instance, and its next run applies it (SPEC §12).

One worker behind a proxy that loses the replies to a chosen script (`LossyProxy`, twice: redis-py
sends a command once more after a connection error, so the call fails though Redis ran it); the
web and the tests talk to Redis directly. The step fails, the Celery task ends its run with an
`error` event (workers/tasks.py → `InstanceHost.end_failed`), as after any unexpected error.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import secrets
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import pytest
import redis

from regina import keys
from regina.runs.context import _HEARTBEAT
from regina.runs.steering import encode
from regina.runs.store import _TAKE
from regina.runs.stream import _WRITE_PENDING, RunPublisher
from regina.runtime.sink import Steer
from tests.harness.clusters import private_cluster
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.lossy_proxy import LossyProxy
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.integration.test_api import spawn

#: The scripts whose replies the worker loses: the take of steering at a step boundary after a
#: tool step, and the run's heartbeat after a model call (at most once a second).
TAKE_SHA = hashlib.sha1(_TAKE.encode()).hexdigest().encode()
HEARTBEAT_SHA = hashlib.sha1(_HEARTBEAT.encode()).hexdigest().encode()
#: And the step boundary's write of a buffered run's events (regina/durable_run.py).
WRITE_PENDING_SHA = hashlib.sha1(_WRITE_PENDING.encode()).hexdigest().encode()


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
            for source in (_TAKE, _HEARTBEAT, _WRITE_PENDING):  # their EVALSHA runs (no NOSCRIPT reply to lose)
                r.script_load(source)
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


def _events(api: httpx.Client, run_id: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in api.get(f"/runs/{run_id}/events").text.splitlines() if line]


def test_a_failed_sync_step_publishes_the_events_it_had_buffered_before_its_error(
    failing: Failing, fake_llm: FakeLLM
) -> None:
    """A sync chat buffers its events until the run's end; a step that failed ended its run with
    the error alone, so `GET /runs/<id>/events` never showed what the model had answered."""
    # Given a sync chat whose model answers (its delta and step-finish buffered), slowly enough
    # that the run's heartbeat is due right after
    api = failing.api
    iid = spawn(api)
    fake_llm.push_for("tell then fail", Reply(text="what I said", usage=(40, 10), delay=1.2))
    # When Redis fails that heartbeat (twice: the step fails before its end)
    failing.proxy.lose_reply_to(HEARTBEAT_SHA, times=2)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "tell then fail"})
    assert failing.proxy.lost.is_set(), "the proxy lost no reply"
    assert resp.status_code == 200 and resp.json()["finishReason"] == "error", resp.text

    # Then the run's events are the step's, in order, and then its error
    events = _events(api, resp.json()["runId"])
    assert [e["type"] for e in events] == ["text-delta", "step-finish", "error"], events
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[0]["textDelta"] == "what I said"
    assert events[1]["usage"] == _usage(prompt=40, completion=10)


def test_a_failed_sync_step_writes_events_a_lost_reply_wrote_already_once(failing: Failing, fake_llm: FakeLLM) -> None:
    """The step boundary's write of a buffered run's events ran though its reply was lost: the
    failed end writes its error after them, and none of them twice."""
    # Given a sync chat whose first step runs a tool
    api = failing.api
    iid = spawn(api)
    fake_llm.push_for("write then fail", Reply(tool_calls=[ToolCall("write_file", {"path": "/w.txt", "content": "x"})]))
    # When Redis runs the step boundary's write (the tool step's events) but loses its reply twice
    failing.proxy.lose_reply_to(WRITE_PENDING_SHA, times=2)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "write then fail"})
    assert failing.proxy.lost.is_set(), "the proxy lost no reply"
    assert resp.status_code == 200 and resp.json()["finishReason"] == "error", resp.text

    # Then the run's stream holds each of the step's events once, then the error
    events = _events(api, resp.json()["runId"])
    assert [e["type"] for e in events] == ["tool-call", "tool-result", "step-finish", "error"], events
    assert [e["seq"] for e in events] == [1, 2, 3, 4]


def test_a_steer_the_failed_step_took_is_applied_by_the_instance_s_next_run(
    failing: Failing, fake_llm: FakeLLM
) -> None:
    # Given a chat whose first model call runs a tool, and a steer sent while the model answers
    api = failing.api
    iid = spawn(api)
    fake_llm.push_for(
        "steer then fail", Reply(tool_calls=[ToolCall("write_file", {"path": "/s.txt", "content": "x"})], delay=1.0)
    )
    # When the step boundary's take moves the steer into the run's steering journal and Redis
    # loses its reply twice: the step fails before the message is in the conversation
    failing.proxy.lose_reply_to(TAKE_SHA, times=2)
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "steer then fail"})
        fake_llm.wait_for_requests(1, timeout=15)
        receipt = api.post(f"/instances/{iid}/steer", json={"message": "remember the red door"}).json()
        failed = chat.result(30)
    assert failing.proxy.lost.is_set(), "the proxy lost no reply"
    assert failed.status_code == 200 and failed.json()["finishReason"] == "error", failed.text
    run_id = failed.json()["runId"]
    assert receipt["steerId"] in "".join(failing.r.lrange(keys.run_steered(run_id), 0, -1))  # the run took it
    assert not any(e["type"] == "steer-applied" for e in _events(api, run_id))

    # Then the instance's next run applies it at its first step boundary, with its receipt
    fake_llm.push_for("next please", Reply(text="got it"))
    nxt = api.post(f"/instances/{iid}/chat", json={"message": "next please"})
    assert nxt.status_code == 200 and nxt.json()["text"] == "got it", nxt.text
    assert "remember the red door" in fake_llm.requests[-1].all_text
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json() if m["role"] == "user"]
    assert contents == ["steer then fail", "remember the red door", "next please"]
    applied = [e for e in _events(api, nxt.json()["runId"]) if e["type"] == "steer-applied"]
    assert [e["steerId"] for e in applied] == [receipt["steerId"]]


def test_a_failed_end_reported_twice_gives_the_steering_back_once(redis_server: RedisServer) -> None:
    """The step's error is reported again when the first report failed (workers/step_strategy.py
    `_report`): the steering goes back in the script that ends the run, so once."""
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        iid, run_id = f"openai-agent-{secrets.token_hex(8)}", f"run-{secrets.token_hex(10)}"
        r.hset(keys.instance_record(iid), mapping={"status": "started", "epoch": "1"})
        r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "running"})
        took = [encode(Steer("steer-1", "first")), encode(Steer("steer-2", "second"))]
        r.rpush(keys.steering(iid), encode(Steer("steer-3", "sent since")))
        for _ in range(2):
            error = {"type": "error", "error": "internal error: ConnectionError (details in the worker log)"}
            RunPublisher(r, run_id, iid, 60, epoch=1).publish(error, give_back=took)
        assert r.lrange(keys.steering(iid), 0, -1) == [*took, encode(Steer("steer-3", "sent since"))]
        assert r.hget(keys.run_record(run_id), "status") == "failed"
        assert [json.loads(f["e"])["type"] for _id, f in r.xrange(keys.run_events(run_id))] == ["error"]
        r.delete(*[keys.instance_record(iid), keys.steering(iid), keys.run_record(run_id), keys.run_events(run_id)])


def test_a_failed_end_writes_the_unwritten_events_that_continue_the_stream(redis_server: RedisServer) -> None:
    """`RunPublisher.adopt`: of a failed step's unwritten events, those in the stream already are
    not written again, and none after a gap (a batch a failed send dropped): seqs stay 1, 2, 3…"""
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        iid, run_id = f"openai-agent-{secrets.token_hex(8)}", f"run-{secrets.token_hex(10)}"
        r.hset(keys.instance_record(iid), mapping={"status": "started", "epoch": "1"})
        r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "running"})
        # Given a failed step's deltas: 1-2 in the stream, and unwritten as its publisher knows
        # 2 (written by a write whose reply was lost), 3 and 5 (4 went in a batch a send dropped)
        step = RunPublisher(r, run_id, iid, 60, seq=0, buffered=True, epoch=1)
        for n in range(1, 6):
            step.publish({"type": "text-delta", "textDelta": f"d{n}"})
        unwritten = step.take_unwritten()
        r.xadd(keys.run_events(run_id), {"e": unwritten[0][1]}, id="0-1")
        r.xadd(keys.run_events(run_id), {"e": unwritten[1][1]}, id="0-2")
        # When the run's failed end adopts them
        end = RunPublisher(r, run_id, iid, 60, epoch=1)
        end.adopt([e for e in unwritten if e[0] != 4][1:])
        end.publish({"type": "error", "error": "internal error: ConnectionError (details in the worker log)"})
        # Then the stream goes on at 3 and ends with the error at 4
        events = [json.loads(f["e"]) for _id, f in r.xrange(keys.run_events(run_id))]
        assert [(e["type"], e["seq"]) for e in events] == [
            ("text-delta", 1),
            ("text-delta", 2),
            ("text-delta", 3),
            ("error", 4),
        ]
        assert step.take_unwritten() == []
        r.delete(keys.instance_record(iid), keys.run_record(run_id), keys.run_events(run_id))
