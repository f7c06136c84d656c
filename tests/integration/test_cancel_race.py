"""A cancel that lands while a run is running but before its worker can interrupt it (SPEC §12:
once the cancel answered `{"cancelled": true}`, the run ends `cancelled`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from regina.instances import InstanceStore
from regina.redis_conn import connect
from regina.runs.steering import new_steer
from regina.runs.store import Idempotency, RunStore
from regina.runs.stream import RUNNING_TTL, RunPublisher
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.redis_server import RedisServer
from tests.integration import test_fencing
from tests.integration.test_fencing import Pair


@pytest.fixture
def running(redis_server: RedisServer) -> Iterator[tuple[InstanceStore, RunStore, str, str]]:
    store = InstanceStore(connect(redis_server.url))
    iid = f"openai-agent-{int(time.time() * 1e6):024x}"[-37:]
    run_id = f"run-race-{iid[-12:]}"
    rec = store.create(iid, "openai-agent", "nobody")
    runs = RunStore(store.r)
    assert runs.open(iid, run_id).kind == "ok"
    assert runs.begin(iid, run_id, rec.epoch).kind == "run"
    try:
        yield store, runs, iid, run_id
    finally:
        store.delete(iid, "openai-agent")


def _events(store: InstanceStore, run_id: str) -> list[dict[str, object]]:
    return [json.loads(f["e"]) for _id, f in store.r.xrange(f"regina:run:{run_id}:events")]


def test_a_run_flagged_for_cancel_ends_cancelled_not_finished(
    running: tuple[InstanceStore, RunStore, str, str],
) -> None:
    store, runs, iid, run_id = running
    assert runs.cancel(run_id) == (True, "running")  # the client heard {"cancelled": true}
    epoch = store.get(iid).epoch  # type: ignore[union-attr]
    publisher = RunPublisher(store.r, run_id, iid, 60, seq=0, buffered=True, epoch=epoch)
    publisher.publish({"type": "text-delta", "text": "the whole answer"})
    steered = publisher.finish_unless_steered(
        {"type": "finish", "finishReason": "stop", "text": 'the whole "finishReason":"stop" answer'},
        f"regina:inst:{iid}:steering",
        0,
    )

    assert steered == []
    assert runs.info(run_id)["status"] == "cancelled"
    assert runs.info(run_id)["finishReason"] == "cancelled"
    last = _events(store, run_id)[-1]
    assert last["type"] == "finish" and last["finishReason"] == "cancelled"
    assert last["text"] == 'the whole "finishReason":"stop" answer'  # the answer's text as it was


def test_a_run_not_flagged_finishes_as_it_says(running: tuple[InstanceStore, RunStore, str, str]) -> None:
    store, runs, iid, run_id = running
    epoch = store.get(iid).epoch  # type: ignore[union-attr]
    RunPublisher(store.r, run_id, iid, 60, seq=0, epoch=epoch).publish(
        {"type": "finish", "finishReason": "stop", "text": "done"}
    )
    assert runs.info(run_id)["status"] == "finished"
    assert _events(store, run_id)[-1]["finishReason"] == "stop"
    assert runs.cancel(run_id) == (False, "finished")


def test_a_cancelled_run_leaves_waiting_steering_for_the_next_run(
    running: tuple[InstanceStore, RunStore, str, str],
) -> None:
    store, runs, iid, run_id = running
    steering = f"regina:inst:{iid}:steering"
    store.r.rpush(steering, json.dumps({"message": "also this", "steerId": "s1"}))
    assert runs.cancel(run_id) == (True, "running")
    epoch = store.get(iid).epoch  # type: ignore[union-attr]
    publisher = RunPublisher(store.r, run_id, iid, 60, seq=0, buffered=True, epoch=epoch)
    steered = publisher.finish_unless_steered({"type": "finish", "finishReason": "stop", "text": "x"}, steering, 0)

    assert steered == []  # not taken into a run that is over
    assert runs.info(run_id)["status"] == "cancelled"
    assert store.r.llen(steering) == 1


def test_a_chat_that_would_steer_a_run_being_cancelled_is_a_run_of_its_own(
    running: tuple[InstanceStore, RunStore, str, str],
) -> None:
    """whenBusy "steer" while the busy run is flagged for cancel (its worker has not stopped it
    yet): the run will take no steering, so the chat was answered with the cancelled run's end and
    its message turned up in some later run. It is queued as a run of its own instead."""
    store, runs, iid, run_id = running
    assert runs.cancel(run_id) == (True, "running")
    steer = new_steer("and this")
    opened = runs.open(iid, "run-race-after-cancel", when_busy="steer", steer=steer)
    assert (opened.kind, opened.run_id) == ("ok", "run-race-after-cancel")
    assert store.r.llen(f"regina:inst:{iid}:steering") == 0
    assert runs.info("run-race-after-cancel")["status"] == "queued"
    # A busy run not being cancelled takes the message.
    store.r.hdel(f"regina:run:{run_id}", "cancel")
    assert runs.open(iid, "run-race-third", when_busy="steer", steer=new_steer("y")).kind == "steered"


# -- the worker's side: a cancel announced while a step starts its run -------------------------

pair = test_fencing.pair  # the two in-process hosts of test_fencing.py


def test_a_cancel_heard_before_the_step_registers_its_run_stops_it_at_once(pair: Pair, fake_llm: FakeLLM) -> None:
    """The announcement reached the worker after the run's begin read the cancel flag (not set
    yet) and before its step registered the run for announcements: the step starts cancelled."""
    host = pair.hosts["a"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    fake_llm.push(Reply(text="a slow answer", delay=30))

    assert host.cancel_local(run_id) is False  # not running here yet: kept for the step
    started = time.monotonic()
    host.run_step(iid, run_id, "hello", stream=False)

    assert time.monotonic() - started < 20  # not after the model's 30 s
    assert fake_llm.requests == []  # stopped before its model call
    last = pair.events(run_id)[-1]
    assert last["type"] == "finish" and last["finishReason"] == "cancelled"
    assert pair.r.hget(f"regina:run:{run_id}", "status") == "cancelled"
    assert run_id not in host.steps.cancelled_early


def test_cancels_of_runs_elsewhere_are_kept_within_a_bound(pair: Pair) -> None:
    host = pair.hosts["a"]
    for n in range(host.PREBEGUN_LIMIT + 10):
        host.cancel_local(f"run-elsewhere-{n}")
    assert len(host.steps.cancelled_early) <= host.PREBEGUN_LIMIT
    assert "run-elsewhere-1009" in host.steps.cancelled_early


# -- how long a run's record and events live ---------------------------------------------------


@pytest.fixture
def instance(redis_server: RedisServer) -> Iterator[tuple[InstanceStore, str]]:
    store = InstanceStore(connect(redis_server.url))
    iid = f"openai-agent-{int(time.time() * 1e6):024x}"[-37:]
    store.create(iid, "openai-agent", "nobody")
    try:
        yield store, iid
    finally:
        store.delete(iid, "openai-agent")


def test_a_run_record_outlives_its_retention_while_the_run_may_go_on(instance: tuple[InstanceStore, str]) -> None:
    """A run queued or running longer than runRetention keeps its record (status, cancel)."""
    store, iid = instance
    runs = RunStore(store.r, retention=2)
    assert runs.open(iid, "run-ttl-open").kind == "ok"
    assert store.r.ttl("regina:run:run-ttl-open") > RUNNING_TTL
    RunPublisher(store.r, "run-ttl-open", iid, 2, seq=0).publish({"type": "finish", "text": "ok"})
    assert 0 < store.r.ttl("regina:run:run-ttl-open") <= 2  # ended: runRetention from now


def test_a_run_opened_with_an_idempotency_key_is_kept_as_long_as_the_key(instance: tuple[InstanceStore, str]) -> None:
    """SPEC §12: the same key within 24 h answers the same run, also past runRetention."""
    store, iid = instance
    runs = RunStore(store.r, retention=2)
    idem = Idempotency(f"regina:idem:test:{iid}", "hash", ttl=600)
    try:
        assert runs.open(iid, "run-ttl-idem", idem=idem).kind == "ok"
        RunPublisher(store.r, "run-ttl-idem", iid, 2, seq=0).publish({"type": "finish", "text": "ok"})
        assert store.r.ttl("regina:run:run-ttl-idem") > 500
        assert store.r.ttl("regina:run:run-ttl-idem:events") > 500
        assert runs.open(iid, "run-ttl-idem-2", idem=idem).kind == "dup"
        assert runs.cancel("run-ttl-idem") == (False, "finished")
    finally:
        store.r.delete(idem.key)


def test_a_queued_run_cancelled_with_an_idempotency_key_is_kept_as_long_as_the_key(
    instance: tuple[InstanceStore, str],
) -> None:
    store, iid = instance
    runs = RunStore(store.r, retention=2)
    idem = Idempotency(f"regina:idem:test-c:{iid}", "hash", ttl=600)
    try:
        assert runs.open(iid, "run-ttl-cancel", idem=idem).kind == "ok"
        assert runs.cancel("run-ttl-cancel")[0] is True
        assert store.r.ttl("regina:run:run-ttl-cancel") > 500
        assert store.r.ttl("regina:run:run-ttl-cancel:events") > 500
    finally:
        store.r.delete(idem.key)


def test_cancelling_a_queued_run_of_a_deleted_instance_leaves_no_key(redis_server: RedisServer) -> None:
    store = InstanceStore(connect(redis_server.url))
    iid = f"openai-agent-{int(time.time() * 1e6):024x}"[-37:]
    store.create(iid, "openai-agent", "nobody")
    runs = RunStore(store.r)
    assert runs.open(iid, "run-of-a-deleted-one").kind == "ok"
    store.r.hset("regina:run:run-of-a-deleted-one", "tagged", "1")  # its step was pushed by the open
    store.delete(iid, "openai-agent")

    assert runs.cancel("run-of-a-deleted-one")[0] is True
    assert not store.r.exists(f"regina:unacked:regina.i.{iid}")


def test_the_runs_of_a_deleted_instance_end_cancelled(instance: tuple[InstanceStore, str]) -> None:
    store, iid = instance
    runs = RunStore(store.r, retention=60)
    rec = store.get(iid)
    assert rec is not None
    assert runs.open(iid, "run-del-running").kind == "ok"
    assert runs.begin(iid, "run-del-running", rec.epoch).kind == "run"
    RunPublisher(store.r, "run-del-running", iid, 60, seq=0, epoch=rec.epoch).publish(
        {"type": "text-delta", "text": "x"}
    )
    assert runs.open(iid, "run-del-queued").kind == "ok"

    assert runs.end_all(iid) == 2

    for run_id, seq in (("run-del-running", 2), ("run-del-queued", 1)):
        assert runs.info(run_id)["status"] == "cancelled"
        last = _events(store, run_id)[-1]
        assert last == {
            "type": "finish",
            "finishReason": "cancelled",
            "text": "",
            "usage": {"promptTokens": 0, "completionTokens": 0},
            "seq": seq,
            "runId": run_id,
        }
        assert 0 < store.r.ttl(f"regina:run:{run_id}") <= 60
    assert store.r.zcard(f"regina:inst:{iid}:runs") == 0
    assert runs.end_all(iid) == 0


def test_a_run_ended_by_its_instances_delete_is_not_ended_again(instance: tuple[InstanceStore, str]) -> None:
    store, iid = instance
    runs = RunStore(store.r, retention=60)
    assert runs.open(iid, "run-del-twice").kind == "ok"
    runs.end_all(iid)
    RunPublisher(store.r, "run-del-twice", iid, 60).publish({"type": "error", "error": "the step broke"})
    assert runs.info("run-del-twice")["status"] == "cancelled"
    assert [e["type"] for e in _events(store, "run-del-twice")] == ["finish"]
