"""A sync chat's events are followed live (SPEC §12: `GET /runs/<id>/events` replays, then
follows live events), not only once the run has ended.

A sync chat's run buffers its events in the worker and writes them with its end (one write for
the common one-step chat). When the run goes on past a step boundary — a step that ran tools, a
steer taken — what it buffered goes out there: a follower (a chat answered 202, a client of
`…/events`) sees every step that ended and every `steer-applied` receipt while the run still
runs. Each check reads the run's record right after the follower got the events: `running`
means they were written before the end (the end writes its events and `finished` together).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from regina import keys
from regina.errors import StaleEpoch
from regina.redis_conn import connect
from regina.runs.stream import RunPublisher
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.lossy_proxy import LossyProxy
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def _running_run(r: redis.Redis, iid: str) -> str:
    return str(wait_until(lambda: r.zrange(keys.instance_runs(iid), 0, 0), what="the run")[0])


def _follow_until(api: httpx.Client, run_id: str, event_type: str) -> list[dict[str, Any]]:
    """`GET /runs/<id>/events` read until an event of `event_type` (the connection is then closed)."""
    seen: list[dict[str, Any]] = []
    with api.stream("GET", f"/runs/{run_id}/events") as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                seen.append(json.loads(line))
                if seen[-1]["type"] == event_type:
                    break
    return seen


def _replay(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in api.get(f"/runs/{run_id}/events").text.splitlines() if line]


def test_a_sync_chat_s_followers_see_a_tool_step_while_the_run_goes_on(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    # Given a sync chat whose first step runs a tool and whose second model call takes a while
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    iid = spawn(api)
    fake_llm.push_for(
        "note it live",
        Reply(tool_calls=[ToolCall("write_file", {"path": "/live.txt", "content": "x"})]),
        Reply(text="noted", delay=3.0),
    )
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "note it live"})
        fake_llm.wait_for_requests(2, timeout=15)  # the tool step ended: the model is asked again
        run_id = _running_run(r, iid)

        # When a client follows the run's events
        seen = _follow_until(api, run_id, "step-finish")

        # Then it gets the tool step while the run still runs
        assert api.get(f"/runs/{run_id}").json()["status"] == "running", "the step's events came with the run's end"
        assert [e["type"] for e in seen] == ["tool-call", "tool-result", "step-finish"]
        assert [e["seq"] for e in seen] == [1, 2, 3]
        answer = chat.result(30)
    # And the run's whole stream is each event once, in order, ending with its finish
    assert answer.status_code == 200 and answer.json()["text"] == "noted", answer.text
    events = _replay(api, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[:3] == seen and events[-1]["type"] == "finish" and events[-1]["text"] == "noted"
    r.close()


def test_a_sync_chat_s_steer_receipt_is_followed_before_the_run_ends(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    # Given a sync chat whose model answers once, and is asked again (slowly) for a steer that
    # came meanwhile
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    iid = spawn(api)
    fake_llm.push_for("steer me live", Reply(text="first thoughts", delay=1.0), Reply(text="steered", delay=3.0))
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "steer me live"})
        fake_llm.wait_for_requests(1, timeout=15)
        receipt = api.post(f"/instances/{iid}/steer", json={"message": "mind the gap"}).json()
        fake_llm.wait_for_requests(2, timeout=15)  # the run took the steer: the model answers it
        run_id = _running_run(r, iid)

        # When the steerer follows the run's events
        seen = _follow_until(api, run_id, "steer-applied")

        # Then its receipt is there while the run still runs, after the step it followed
        assert api.get(f"/runs/{run_id}").json()["status"] == "running", "the receipt came with the run's end"
        assert seen[-1]["steerId"] == receipt["steerId"] and seen[-1]["message"] == "mind the gap"
        assert [e["type"] for e in seen] == ["text-delta", "step-finish", "steer-applied"]
        answer = chat.result(30)
    assert answer.status_code == 200 and answer.json()["text"] == "steered", answer.text
    events = _replay(api, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "finish"
    r.close()


# -- the write itself: fenced, and written once when its reply is lost ---------------------------


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as r:
        yield r


def _running(r: redis.Redis, epoch: int) -> tuple[str, str]:
    iid, run_id = f"openai-agent-{secrets.token_hex(8)}", f"run-{secrets.token_hex(10)}"
    r.hset(keys.instance_record(iid), mapping={"status": "started", "epoch": str(epoch)})
    r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "running"})
    return iid, run_id


def _types(r: redis.Redis, run_id: str) -> list[tuple[str, int]]:
    return [(json.loads(f["e"])["type"], json.loads(f["e"])["seq"]) for _id, f in r.xrange(keys.run_events(run_id))]


def test_a_stale_owner_writes_none_of_its_buffered_events(direct: redis.Redis) -> None:
    # Given a buffered publisher at epoch 1 of an instance that moved on to epoch 2
    iid, run_id = _running(direct, 2)
    publisher = RunPublisher(direct, run_id, iid, 60, seq=0, buffered=True, epoch=1)
    publisher.publish({"type": "step-finish", "finishReason": "tool-calls", "usage": {}})
    # When its step boundary writes them out: refused, nothing written, progress neither
    with pytest.raises(StaleEpoch):
        publisher.write_pending("1 10 5")
    assert _types(direct, run_id) == [] and direct.hget(keys.run_record(run_id), "spent") is None
    direct.delete(keys.instance_record(iid), keys.run_record(run_id))


def test_a_step_boundary_write_run_twice_writes_each_event_once(redis_server: RedisServer, direct: redis.Redis) -> None:
    iid, run_id = _running(direct, 1)
    with LossyProxy("127.0.0.1", redis_server.port) as proxy:
        publisher = RunPublisher(connect(proxy.url), run_id, iid, 60, seq=0, buffered=True, epoch=1)
        publisher.publish({"type": "tool-call", "toolCallId": "c1", "toolName": "bash", "args": {}})
        publisher.publish({"type": "step-finish", "finishReason": "tool-calls", "usage": {}})
        publisher.write_pending("1 10 5")  # the script is loaded
        publisher.publish({"type": "steer-applied", "steerId": "s-lost-once", "message": "left"})

        proxy.lose_reply_to(b"s-lost-once")
        publisher.write_pending("")
        assert proxy.lost.is_set(), "the proxy cut no reply"
        publisher.publish({"type": "finish", "finishReason": "stop", "text": "done"})

    assert _types(direct, run_id) == [("tool-call", 1), ("step-finish", 2), ("steer-applied", 3), ("finish", 4)]
    assert direct.hget(keys.run_record(run_id), "status") == "finished"
    assert direct.ttl(keys.run_events(run_id)) > 0
    direct.delete(keys.instance_record(iid), keys.run_record(run_id), keys.run_events(run_id))
