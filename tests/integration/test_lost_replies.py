"""A script whose reply is lost runs again and must not act twice.

redis-py sends a command once more after a connection error, and the chat's open re-runs its
script itself when the pipelined open-and-read fails: the first run may have happened. Each
transition of a run is written so that running it again with the same arguments answers what the
first run did and changes nothing more. The proxy runs the command on a real Redis and cuts the
connection before the reply reaches the client.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import redis

from regina import keys
from regina.redis_conn import connect
from regina.runs.steering import decode_all, encode
from regina.runs.store import RunStore
from regina.runs.stream import RunPublisher
from regina.runtime.sink import Steer
from tests.harness.lossy_proxy import LossyProxy
from tests.harness.redis_server import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LossyProxy]:
    with LossyProxy("127.0.0.1", redis_server.port) as p:
        yield p


@pytest.fixture
def direct(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


def _started_instance(r: redis.Redis) -> str:
    """A started instance whose member is alive: an open pushes the step onto its queue."""
    iid = f"openai-agent-{secrets.token_hex(8)}"
    member = f"m-{secrets.token_hex(4)}@test"
    r.set(keys.MEMBER_PREFIX + member, "1", ex=60)
    r.hset(keys.instance_record(iid), mapping={"status": "started", "member": member, "epoch": "1"})
    return iid


def _cleanup(r: redis.Redis, iid: str, *run_ids: str) -> None:
    rec = r.hgetall(keys.instance_record(iid))
    r.delete(
        keys.instance_record(iid),
        keys.instance_runs(iid),
        keys.instance_queue(iid),
        keys.steering(iid),
        keys.member_ready(rec.get("member", "")),
        keys.MEMBER_PREFIX + rec.get("member", ""),
        *[keys.run_record(x) for x in run_ids],
        *[keys.run_steered(x) for x in run_ids],
    )


@pytest.mark.parametrize("pipelined", [True, False], ids=["open-and-read", "open"])
@pytest.mark.parametrize("when_busy", ["queue", "reject"])
def test_an_open_run_twice_queues_one_step(
    proxy: LossyProxy, direct: redis.Redis, pipelined: bool, when_busy: str
) -> None:
    store = RunStore(connect(proxy.url))
    iid = _started_instance(direct)
    run_id = f"run-{secrets.token_hex(10)}"
    try:
        store.open(iid, f"run-{secrets.token_hex(10)}", step_message="warm")  # the script is loaded
        direct.delete(keys.instance_queue(iid), keys.instance_runs(iid))
        rec = direct.hgetall(keys.instance_record(iid))
        direct.delete(keys.member_ready(rec["member"]))

        proxy.lose_reply_to(run_id.encode())
        opened = store.open(
            iid, run_id, when_busy=when_busy, step_message="step", read_events=50 if pipelined else None  # type: ignore[arg-type]
        )
        assert proxy.lost.is_set(), "the proxy cut no reply"
        if opened.pending is not None:
            opened.pending.discard()

        assert (opened.kind, opened.run_id, opened.queued) == ("ok", run_id, True)
        assert direct.lrange(keys.instance_queue(iid), 0, -1) == ["step"]
        assert direct.llen(keys.member_ready(rec["member"])) == 1
        assert direct.zrange(keys.instance_runs(iid), 0, -1) == [run_id]
        assert direct.hget(keys.run_record(run_id), "status") == "queued"
    finally:
        _cleanup(direct, iid, run_id)


def test_a_steer_run_twice_is_queued_once(proxy: LossyProxy, direct: redis.Redis) -> None:
    store = RunStore(connect(proxy.url))
    iid = _started_instance(direct)
    try:
        store.steer(iid, Steer("steer-warm", "warm"))
        direct.delete(keys.steering(iid))

        proxy.lose_reply_to(b"steer-lost-once")
        kind, steer_id = store.steer(iid, Steer("steer-lost-once", "go left"))
        assert proxy.lost.is_set(), "the proxy cut no reply"

        assert (kind, steer_id) == ("ok", "steer-lost-once")
        assert [s.steer_id for s in decode_all(direct.lrange(keys.steering(iid), 0, -1))] == ["steer-lost-once"]
    finally:
        _cleanup(direct, iid)


def test_steering_taken_twice_is_not_lost(proxy: LossyProxy, direct: redis.Redis) -> None:
    """The first take moved the messages into the run's journal; the second finds the list empty
    and must still hand them to the step."""
    store = RunStore(connect(proxy.url))
    iid = _started_instance(direct)
    run_id = f"run-{secrets.token_hex(10)}"
    try:
        assert store.take_steering(iid, run_id, 0) == []  # the script is loaded
        direct.rpush(keys.steering(iid), encode(Steer("steer-a", "go left")))

        proxy.lose_reply_to(keys.run_steered(run_id).encode())
        taken = store.take_steering(iid, run_id, 0)
        assert proxy.lost.is_set(), "the proxy cut no reply"

        assert [s.steer_id for s in taken] == ["steer-a"]
        assert direct.llen(keys.steering(iid)) == 0
        # A later take returns only what came since.
        direct.rpush(keys.steering(iid), encode(Steer("steer-b", "go right")))
        assert [s.steer_id for s in store.take_steering(iid, run_id, 1)] == ["steer-b"]
    finally:
        _cleanup(direct, iid, run_id)


def test_a_steering_open_run_twice_steers_once(proxy: LossyProxy, direct: redis.Redis) -> None:
    store = RunStore(connect(proxy.url))
    iid = _started_instance(direct)
    busy = f"run-{secrets.token_hex(10)}"
    try:
        assert store.open(iid, busy, step_message="step").kind == "ok"

        proxy.lose_reply_to(b"steer-open-once")
        opened = store.open(
            iid, f"run-{secrets.token_hex(10)}", when_busy="steer", steer=Steer("steer-open-once", "also this")
        )
        assert proxy.lost.is_set(), "the proxy cut no reply"

        assert (opened.kind, opened.run_id) == ("steered", busy)
        assert [s.steer_id for s in decode_all(direct.lrange(keys.steering(iid), 0, -1))] == ["steer-open-once"]
    finally:
        _cleanup(direct, iid, busy)


def test_a_finish_that_took_steering_twice_does_not_end_the_run(proxy: LossyProxy, direct: redis.Redis) -> None:
    """The first run of the finish took the waiting message (the loop must go on with it); run
    again, it finds the list empty and must return the message again, not end the run."""
    iid = _started_instance(direct)
    run_id = f"run-{secrets.token_hex(10)}"
    client = connect(proxy.url)
    steering = keys.steering(iid)
    try:
        direct.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "running"})
        warm = RunPublisher(client, "run-warm", iid, 60, buffered=True)  # the finish script is loaded
        assert warm.finish_unless_steered({"type": "finish", "finishReason": "stop", "text": ""}, steering, 0) == []
        publisher = RunPublisher(client, run_id, iid, 60, buffered=True)
        publisher.publish({"type": "text-delta", "text": "an answer"})
        direct.rpush(steering, encode(Steer("steer-a", "one more thing")))

        proxy.lose_reply_to(b"finishReason")
        steered = publisher.finish_unless_steered({"type": "finish", "finishReason": "stop", "text": "x"}, steering, 0)
        assert proxy.lost.is_set(), "the proxy cut no reply"

        assert [s.steer_id for s in decode_all(steered)] == ["steer-a"]
        assert direct.hget(keys.run_record(run_id), "status") == "running"
        # The step goes on with the message and finishes later.
        final = {"type": "finish", "finishReason": "stop", "text": "y"}
        assert publisher.finish_unless_steered(final, steering, 1) == []
        assert direct.hget(keys.run_record(run_id), "status") == "finished"
    finally:
        _cleanup(direct, iid, run_id)
        direct.delete(keys.run_events(run_id), keys.run_record("run-warm"), keys.run_events("run-warm"))


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
def test_a_batch_of_events_sent_twice_is_published_once(proxy: LossyProxy, direct: redis.Redis, fenced: bool) -> None:
    """The events go out with their own ids (`0-<seq>`); the same batch again finds them there and
    must not fail the run."""
    iid = _started_instance(direct)
    run_id = f"run-{secrets.token_hex(10)}"
    client = connect(proxy.url)
    try:
        publisher = RunPublisher(client, run_id, iid, 60, epoch=1 if fenced else None)  # each event sent at once
        publisher.publish({"type": "text-delta", "textDelta": "warm "})

        proxy.lose_reply_to(b"lost-once")
        publisher.publish({"type": "text-delta", "textDelta": "lost-once"})
        assert proxy.lost.is_set(), "the proxy cut no reply"
        publisher.publish({"type": "finish", "finishReason": "stop", "text": "warm lost-once"})

        seen = [json.loads(f["e"]) for _id, f in direct.xrange(keys.run_events(run_id))]
        assert [(e["type"], e["seq"]) for e in seen] == [("text-delta", 1), ("text-delta", 2), ("finish", 3)]
    finally:
        _cleanup(direct, iid, run_id)
        direct.delete(keys.run_events(run_id))


def test_a_cancel_run_twice_answers_cancelled(proxy: LossyProxy, direct: redis.Redis) -> None:
    """The cancel's second run found the queued run it had just ended and answered "already
    ended" (`{"cancelled": false, "status": "cancelled"}`) to the client that cancelled it."""
    store = RunStore(connect(proxy.url))
    iid = _started_instance(direct)
    warm, run_id = f"run-{secrets.token_hex(10)}", f"run-{secrets.token_hex(10)}"
    try:
        store.open(iid, warm, step_message="warm")
        store.cancel(warm)  # the script is loaded
        store.open(iid, run_id, step_message="step")

        proxy.lose_reply_to(b'"finishReason":"cancelled"')
        answer = store.cancel(run_id)
        assert proxy.lost.is_set(), "the proxy cut no reply"

        assert answer == (True, "cancelled")  # a queued run ends at once
        assert direct.hget(keys.run_record(run_id), "status") == "cancelled"
        events = [json.loads(e["e"]) for _, e in direct.xrange(keys.run_events(run_id))]
        assert [e["type"] for e in events] == ["finish"]
        assert store.cancel(run_id) == (False, "cancelled")  # another cancel: the run had ended
    finally:
        _cleanup(direct, iid, warm, run_id)
