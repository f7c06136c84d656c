"""Streamed runs send text deltas to Redis in batches (issue 16, streaming).

One XADD round trip per delta made the last of 20 deltas reach the client ~15 ms after the first;
deltas waiting together now go out in one round trip, in order, and any other event goes out at
once after the deltas before it.
"""

from __future__ import annotations

import time

import pytest
import redis

from regina.errors import StaleEpoch
from regina.runs.stream import RunPublisher
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until


def _seqs(r: redis.Redis, run_id: str) -> list[int]:
    return [int(entry_id.split("-")[1]) for entry_id, _ in r.xrange(f"regina:run:{run_id}:events")]


def test_deltas_wait_for_the_window_then_go_out_together_in_order(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    # A window far longer than 20 publishes take, even on a loaded machine: none may go out alone.
    pub = RunPublisher(r, "run-batch-1", "inst-batch", retention=60, seq=0, batch_window=1.5)
    t0 = time.monotonic()
    for i in range(20):
        pub.publish({"type": "text-delta", "text": f"w{i} "})
    assert time.monotonic() - t0 < 1.5 and _seqs(r, "run-batch-1") == []  # nothing sent per delta
    wait_until(lambda: len(_seqs(r, "run-batch-1")) == 20, timeout=5, what="the batch")
    assert _seqs(r, "run-batch-1") == list(range(1, 21))
    r.delete("regina:run:run-batch-1:events")
    r.close()


def test_other_events_send_the_waiting_deltas_first(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pub = RunPublisher(r, "run-batch-2", "inst-batch", retention=60, seq=0, batch_window=30)
    pub.publish({"type": "text-delta", "text": "a"})
    pub.publish({"type": "text-delta", "text": "b"})
    pub.publish({"type": "tool-call", "toolCallId": "c1", "toolName": "bash", "args": {}})
    assert _seqs(r, "run-batch-2") == [1, 2, 3]  # no wait for the 30 s window
    pub.publish({"type": "text-delta", "text": "c"})
    pub.publish({"type": "finish", "text": "abc", "finishReason": "stop", "usage": {}})
    events = r.xrange("regina:run:run-batch-2:events")
    assert [e["e"].split('"type":"')[1].split('"')[0] for _, e in events] == [
        "text-delta",
        "text-delta",
        "tool-call",
        "text-delta",
        "finish",
    ]
    r.delete("regina:run:run-batch-2:events", "regina:run:run-batch-2")
    r.close()


def test_with_no_window_the_first_delta_goes_out_at_once_and_the_rest_follow_in_order(
    redis_server: RedisServer,
) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pub = RunPublisher(r, "run-batch-3", "inst-batch", retention=60, seq=0, batch_window=0)
    pub.publish({"type": "text-delta", "text": "first"})
    wait_until(lambda: _seqs(r, "run-batch-3") == [1], timeout=5, what="the first delta alone")
    for i in range(19):
        pub.publish({"type": "text-delta", "text": f"w{i}"})
    wait_until(lambda: len(_seqs(r, "run-batch-3")) == 20, timeout=5, what="the other deltas")
    assert _seqs(r, "run-batch-3") == list(range(1, 21))
    r.delete("regina:run:run-batch-3:events")
    r.close()


def test_a_stale_owner_s_batched_delta_stops_the_step_at_its_next_publish(redis_server: RedisServer) -> None:
    # Given a publisher fenced at epoch 1 of an instance that moved on to epoch 2
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.hset("regina:inst:inst-batch-stale", "epoch", "2")
    pub = RunPublisher(r, "run-batch-4", "inst-batch-stale", retention=60, seq=0, batch_window=0, epoch=1)
    # When a delta goes out from the sender thread and is refused
    pub.publish({"type": "text-delta", "text": "late"})
    wait_until(lambda: not pub._sender_due, timeout=5, what="the sender to end")
    # Then the step's next publish raises StaleEpoch (the thread had no one to raise it to), and
    # nothing was written
    with pytest.raises(StaleEpoch):
        pub.publish({"type": "text-delta", "text": "more"})
    with pytest.raises(StaleEpoch):
        pub.publish({"type": "finish", "text": "late more", "finishReason": "stop", "usage": {}})
    assert _seqs(r, "run-batch-4") == []
    r.delete("regina:inst:inst-batch-stale")
    r.close()
