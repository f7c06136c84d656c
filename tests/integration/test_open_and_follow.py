"""A chat's open and its first wait for events in one write (RunStore.open's `read_events`,
RunService.start_following): the pending XREAD is read by the follow, or discarded, and the
connection it holds always goes back to the pool fit for the next command. A real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from regina import ids, keys
from regina.redis_conn import connect
from regina.runs.store import RunStore
from regina.runs.stream import read_events
from tests.harness.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    r = connect(redis_server.url, concurrency=4)
    yield r
    r.close()


def _instance(r: redis.Redis) -> str:
    iid = ids.new_instance_id("openai-agent")
    # Started on no live member: the open queues the run and does not push a step.
    r.hset(keys.instance_record(iid), mapping={"status": "started", "epoch": "1", "member": "nobody"})
    return iid


def _store(r: redis.Redis) -> RunStore:
    """A store whose open script Redis has loaded (one open without a read: EVALSHA, then LOAD)."""
    store = RunStore(r)
    assert store.open(ids.new_instance_id("openai-agent"), ids.new_run_id()).kind == "missing"
    return store


def _in_use(r: redis.Redis) -> int:
    pool = r.connection_pool
    return len(pool._connections) - sum(1 for c in pool.pool.queue if c is not None)  # type: ignore[attr-defined]


def _publish(r: redis.Redis, run_id: str, seq: int, event: dict[str, object]) -> None:
    r.xadd(keys.run_events(run_id), {"e": json.dumps({**event, "seq": seq, "runId": run_id})}, id=f"0-{seq}")


def test_the_first_wait_rides_with_the_open_and_gets_the_events(client: redis.Redis) -> None:
    store = _store(client)
    iid, run_id = _instance(client), ids.new_run_id()
    opened = store.open(iid, run_id, read_events=2000)
    assert opened.kind == "ok" and opened.pending is not None
    assert _in_use(client) == 1  # the pending XREAD holds its connection

    other = redis.Redis.from_url(_url(client))
    threading.Timer(0.2, lambda: _publish(other, run_id, 1, {"type": "text-delta", "textDelta": "hi"})).start()
    started = time.monotonic()
    events = read_events(client, run_id, after=0, block_ms=2000, pending=opened.pending)
    first = next(events)
    assert first is not None and first["type"] == "text-delta" and first["seq"] == 1
    assert 0.15 < time.monotonic() - started < 1.5  # woken by the event, not by the timeout
    assert _in_use(client) == 0
    _publish(other, run_id, 2, {"type": "finish", "text": "hi"})
    second = next(events)
    assert second is not None and second["seq"] == 2  # then the ordinary XREADs, after seq 1
    assert client.ping()
    other.close()


def test_a_pending_wait_that_times_out_yields_none_and_the_follow_goes_on(client: redis.Redis) -> None:
    store = _store(client)
    iid, run_id = _instance(client), ids.new_run_id()
    opened = store.open(iid, run_id, read_events=100)
    events = read_events(client, run_id, after=0, block_ms=100, pending=opened.pending)
    assert next(events) is None
    _publish(client, run_id, 1, {"type": "finish", "text": ""})
    event = next(events)
    assert event is not None and event["seq"] == 1


def test_an_open_that_is_not_ok_discards_the_wait(client: redis.Redis) -> None:
    store = _store(client)
    opened = store.open(ids.new_instance_id("openai-agent"), ids.new_run_id(), read_events=5000)  # no such instance
    assert opened.kind == "missing" and opened.pending is None
    assert _in_use(client) == 0
    assert client.ping()  # the pool hands out a connection with nothing pending on it


def test_a_discarded_wait_leaves_no_reply_behind(client: redis.Redis) -> None:
    store = _store(client)
    iid, run_id = _instance(client), ids.new_run_id()
    opened = store.open(iid, run_id, read_events=5000)
    assert opened.pending is not None
    opened.pending.discard()
    opened.pending.discard()  # idempotent
    assert _in_use(client) == 0
    _publish(client, run_id, 1, {"type": "finish", "text": ""})  # would wake the XREAD
    for _ in range(5):
        assert client.get("no-such-key") is None  # no stale XREAD reply read as this one's
        assert client.ping()


def test_without_the_script_loaded_the_open_loads_it_and_follows_as_usual(client: redis.Redis) -> None:
    store = _store(client)
    client.script_flush()
    iid, run_id = _instance(client), ids.new_run_id()
    opened = store.open(iid, run_id, read_events=5000)
    assert opened.kind == "ok" and opened.pending is None
    assert client.hget(keys.run_record(run_id), "status") == "queued"
    assert client.zscore(keys.instance_runs(iid), run_id) is not None
    assert _in_use(client) == 0
    _publish(client, run_id, 1, {"type": "finish", "text": ""})
    event = next(read_events(client, run_id, after=0, block_ms=1000))
    assert event is not None and event["seq"] == 1


def _url(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"
