"""Fencing and durability of the worker side, driven in-process against a real Redis and the fake LLM.

Two `InstanceHost`s with separate VFS directories stand for two workers; ownership moves the way
the coordinator moves it (`InstanceStore.claim`). A stale owner must write nothing shared, and
whatever a run acknowledged must reach the next owner without the first one's disk.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from regina import keys
from regina.backups import Backups
from regina.config import Settings, StorageSettings
from regina.errors import StaleEpoch
from regina.factory_hooks import FactoryHooks
from regina.host import InstanceHost, NotHere
from regina.ids import new_instance_id, new_run_id
from regina.instances import InstanceStore
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.runs.steering import encode as encode_steer
from regina.runs.store import RunStore
from regina.runtime.messages import OUTCOME_UNKNOWN
from regina.runtime.sink import Steer
from storage.redis import RedisStorage
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until

AGENTS = Path(__file__).resolve().parents[1] / "agents"


class Pair:
    """Two workers' hosts over one Redis and one storage."""

    def __init__(self, url: str, tmp: Path, storage_type: type[RedisStorage] = RedisStorage) -> None:
        self.tmp = tmp
        self.settings = {
            m: Settings(
                redis=url,
                agents_dir=str(AGENTS),
                vfs_dir=str(tmp / f"vfs-{m}"),
                storage=StorageSettings(type="redis"),
            )
            for m in ("a", "b")
        }
        self.r: redis.Redis = connect(url)
        self.store = InstanceStore(self.r)
        self.storage = storage_type(url, prefix=f"t{id(self)}:")
        registry = AgentRegistry(self.settings["a"])
        registry.load()
        self.hosts = {
            m: InstanceHost(s, registry, self.r, self.storage, FactoryHooks(), f"{m}-{id(self)}@test")
            for m, s in self.settings.items()
        }

    def spawn(self, definition: str = "openai-agent") -> str:
        iid = new_instance_id(definition)
        self.store.create(iid, definition, self.hosts["a"].member_id)
        self.hosts["a"].attach(iid, 1)
        return iid

    def move(self, iid: str, to: str) -> int:
        """What the coordinator does when the owner is deemed gone: a new epoch for `to`."""
        return self.store.claim(iid, self.hosts[to].member_id)

    def new_run(self, iid: str) -> str:
        """A queued run's record, as the coordinator writes it before queueing the step."""
        run_id = new_run_id()
        self.r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "queued"})
        return run_id

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(f["e"]) for _id, f in self.r.xrange(keys.run_events(run_id))]


@pytest.fixture
def pair(
    redis_server: RedisServer, fake_llm: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    p = Pair(redis_server.url, tmp_path)
    yield p
    p.storage.close()


def test_a_stale_owner_cannot_back_up_and_lets_go_of_the_instance(pair: Pair) -> None:
    # Given an instance that moved from a to b, and b suspended it with its own file
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    a.active[iid].vfs.write("/who", b"a")
    epoch = pair.move(iid, "b")
    b.attach(iid, epoch)
    b.active[iid].vfs.write("/who", b"b")
    assert b.suspend(iid)["backedUp"]
    latest = pair.store.get(iid)
    assert latest is not None

    # When the old owner suspends (its idle timer fired after a pause)
    answer = a.suspend(iid)

    # Then it backs nothing up, forgets the instance, and b's backup stays the latest
    assert answer == {"backedUp": False, "moved": True}
    assert iid not in a.active
    after = pair.store.get(iid)
    assert after is not None and after.backup_key == latest.backup_key and after.status == "suspended"
    # and a backup written by a stale owner after the check is discarded, never pointed at
    with pytest.raises(StaleEpoch):
        Backups(pair.r, pair.storage).save(iid, 1, latest.backup_version + 1, lambda: b"stale bytes")
    assert pair.storage.list(f"instances/{iid}/") == [latest.backup_key]
    b.attach(iid, pair.move(iid, "b"))
    assert b.active[iid].vfs.read("/who") == b"b"


def test_a_running_step_stops_before_its_tool_once_the_instance_moved(pair: Pair, fake_llm: FakeLLM) -> None:
    # Given a step on a that waits on the model, which will ask for a tool
    a = pair.hosts["a"]
    iid = pair.spawn("tool-agent")
    fake_llm.push_for(
        "count these words",
        Reply(tool_calls=[ToolCall("word_count", {"text": "one two"})], delay=1.0),
        Reply(text="never asked"),
    )
    run_id = pair.new_run(iid)
    failures: list[BaseException] = []

    def step() -> None:
        try:
            a.run_step(iid, run_id, "count these words", stream=True)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            failures.append(exc)

    thread = threading.Thread(target=step)
    thread.start()
    fake_llm.wait_for_requests(1, timeout=60)  # the process's first model call imports LiteLLM

    # When the instance moves to b meanwhile
    pair.move(iid, "b")
    thread.join(60)

    # Then a's step ends with StaleEpoch before the tool: no tool event, no further model call,
    # no terminal event, and a holds the instance no more
    assert failures and isinstance(failures[0], StaleEpoch)
    types = [e["type"] for e in pair.events(run_id)]
    assert "tool-call" not in types and "tool-result" not in types and "finish" not in types
    assert len(fake_llm.requests) == 1
    assert iid not in a.active


def test_a_stale_owner_writes_nothing_for_a_new_step(pair: Pair) -> None:
    # Given an instance that moved to b while a still has it attached
    a = pair.hosts["a"]
    iid = pair.spawn()
    pair.move(iid, "b")
    pair.r.rpush(keys.steering(iid), "for b")
    run_id = pair.new_run(iid)

    # When a step for it reaches a
    with pytest.raises(StaleEpoch):
        a.run_step(iid, run_id, "hello", stream=False)

    # Then a did not touch the run, took no steering and let go of the instance
    assert pair.r.hget(keys.run_record(run_id), "status") == "queued" and not pair.r.exists(keys.run_events(run_id))
    assert pair.r.lrange(keys.steering(iid), 0, -1) == ["for b"]
    assert iid not in a.active


def test_an_answered_chat_survives_the_owner_and_its_disk(pair: Pair) -> None:
    # Given a chat answered on a (no backup taken since: only the journal holds it)
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    a.run_step(iid, run_id, "remember me", stream=False)
    assert pair.events(run_id)[-1]["type"] == "finish"
    a.active[iid].vfs.write("/notes.txt", b"written by a tool")  # a change outside any run: not acked

    # When a's disk is gone and b takes over
    shutil.rmtree(pair.settings["a"].vfs_dir)
    b.attach(iid, pair.move(iid, "b"))

    # Then b has the conversation
    contents = [m["content"] for m in b.messages(iid)]
    assert contents == ["remember me", "echo: remember me"]


def test_the_message_of_a_run_cancelled_before_its_model_call_survives_the_owner_and_its_disk(
    pair: Pair,
) -> None:
    # Given a run flagged for cancel before its step started: it ends `cancelled` at once, and
    # its message is in the conversation (GET /messages shows it)
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    pair.r.hset(keys.run_record(run_id), "cancel", str(time.time()))
    a.run_step(iid, run_id, "please remember this", stream=False)
    assert pair.events(run_id)[-1]["finishReason"] == "cancelled"
    assert [m["content"] for m in a.messages(iid)] == ["please remember this"]

    # When a's disk is gone and b takes over
    shutil.rmtree(pair.settings["a"].vfs_dir)
    b.attach(iid, pair.move(iid, "b"))

    # Then the message was in Redis before the client heard of the end
    assert [m["content"] for m in b.messages(iid)] == ["please remember this"]


def test_a_stale_owner_takes_no_steering(pair: Pair) -> None:
    """An owner paused between its last check and its take of steering: the take itself is
    fenced, so the message stays for the run on the new owner (the client was told it queued)."""
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    epoch = pair.move(iid, "b")
    pair.r.rpush(keys.steering(iid), encode_steer(Steer("steer-x", "go left")))
    runs = RunStore(pair.r)

    with pytest.raises(StaleEpoch):
        runs.take_steering(iid, run_id, 0, epoch=epoch - 1)

    assert pair.r.llen(keys.steering(iid)) == 1
    assert [s.steer_id for s in runs.take_steering(iid, run_id, 0, epoch=epoch)] == ["steer-x"]


def test_a_tool_started_on_a_lost_owner_is_reported_not_rerun(pair: Pair, fake_llm: FakeLLM) -> None:
    # Given a run on a whose owner is lost while its tool runs
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    fake_llm.push_for(
        "append a line",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo ran >> /count; sleep 3"})]),
        Reply(text="recovered on b"),
    )
    run_id = pair.new_run(iid)
    thread = threading.Thread(target=lambda: _swallow(a.run_step, iid, run_id, "append a line", True))
    thread.start()
    wait_until(lambda: "tool-call" in [e["type"] for e in pair.events(run_id)], timeout=60, what="the tool to start")
    time.sleep(1.0)  # the tool wrote its line and sleeps
    pair.move(iid, "b")
    thread.join(60)

    # When the step is redelivered to b
    b.attach(iid, pair.store.get(iid).epoch)  # type: ignore[union-attr]
    b.run_step(iid, run_id, "append a line", stream=True)

    # Then b did not run the tool again, the model saw the ledger's answer, and the run finished once
    assert not b.active[iid].vfs.exists("/count")
    tool_msgs = [m for m in fake_llm.requests[-1].messages if m.get("role") == "tool"]
    assert [json.loads(m["content"]) for m in tool_msgs] == [OUTCOME_UNKNOWN]
    events = pair.events(run_id)
    assert [e["type"] for e in events].count("finish") == 1 and events[-1]["text"] == "recovered on b"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    history = b.messages(iid)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]


def test_a_tool_that_completed_on_a_lost_owner_keeps_its_result_and_changes(pair: Pair, fake_llm: FakeLLM) -> None:
    # Given a run on a whose tool completed, and whose owner was lost while the model was asked again
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    fake_llm.push_for(
        "append a line",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo ran >> /count"})]),
        Reply(text="done on a", delay=1.0),
        Reply(text="recovered on b"),
    )
    run_id = pair.new_run(iid)
    thread = threading.Thread(target=lambda: _swallow(a.run_step, iid, run_id, "append a line", True))
    thread.start()
    fake_llm.wait_for_requests(2, timeout=60)
    pair.move(iid, "b")
    thread.join(60)

    # When the step is redelivered to b
    b.attach(iid, pair.store.get(iid).epoch)  # type: ignore[union-attr]
    b.run_step(iid, run_id, "append a line", stream=True)

    # Then the tool's result and its file change reached b (shipped when its step ended): the model
    # got the real result, not "outcome unknown", and the tool ran once
    assert b.active[iid].vfs.read("/count") == b"ran\n"
    tool_msgs = [m for m in fake_llm.requests[-1].messages if m.get("role") == "tool"]
    assert len(tool_msgs) == 1 and json.loads(tool_msgs[0]["content"]) != OUTCOME_UNKNOWN
    events = pair.events(run_id)
    assert [e["type"] for e in events].count("finish") == 1 and events[-1]["text"] == "recovered on b"
    history = b.messages(iid)
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant"]


def test_a_redelivered_step_runs_before_a_later_run_that_arrives_as_the_attach_ends(
    pair: Pair, fake_llm: FakeLLM
) -> None:
    # Given a run on a whose tool completed, and whose owner was lost while the model was asked again
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    fake_llm.push_for(
        "first run",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo one > /one"})]),
        Reply(text="lost with a", delay=1.0),
    )
    run_id = pair.new_run(iid)
    thread = threading.Thread(target=lambda: _swallow(a.run_step, iid, run_id, "first run", True))
    thread.start()
    fake_llm.wait_for_requests(2, timeout=60)
    pair.move(iid, "b")
    thread.join(60)

    # When b attaches it, the redelivered step waiting for the attach (it came first off the
    # queue) and the next run's step arriving the moment the attach ends (chaos test, issue 10)
    later = pair.new_run(iid)
    b.begin_attach(iid)
    redelivered = threading.Thread(target=b.run_step, args=(iid, run_id, "first run", True))
    redelivered.start()
    wait_until(lambda: b.loading[iid].waiting == 1, timeout=30, what="the redelivered step to wait for the attach")
    b.attach(iid, pair.store.get(iid).epoch)  # type: ignore[union-attr]
    b.run_step(iid, later, "second run", stream=True)
    redelivered.join(60)

    # Then the redelivered run finished its turn first: the later run's message and answer come
    # after it, not inside it (its answer was the model's reply to the later message, twice)
    history = b.messages(iid)
    assert [(m["role"], m.get("runId")) for m in history] == [
        ("user", run_id),
        ("assistant", run_id),
        ("tool", run_id),
        ("assistant", run_id),
        ("user", later),
        ("assistant", later),
    ], history
    assert pair.events(run_id)[-1]["text"] == "echo: first run"
    assert pair.events(later)[-1]["text"] == "echo: second run"


def test_a_step_running_when_its_member_is_claimed_again_finishes_there(pair: Pair, fake_llm: FakeLLM) -> None:
    # Given a step on a waiting for the model
    a = pair.hosts["a"]
    iid = pair.spawn()
    fake_llm.push_for("slow answer", Reply(text="answered", delay=1.5))
    run_id = pair.new_run(iid)
    thread = threading.Thread(target=lambda: _swallow(a.run_step, iid, run_id, "slow answer", True))
    thread.start()
    fake_llm.wait_for_requests(1, timeout=30)

    # When a is claimed again meanwhile (its member key lapsed; the coordinator placed the instance
    # on it again: a new epoch with nobody in between) and attaches it at that epoch
    a.attach(iid, pair.move(iid, "a"))
    thread.join(60)

    # Then the step finishes there and a keeps the instance (it was dropped: the step's events
    # were still fenced with the old epoch, and nobody served the instance any more)
    events = pair.events(run_id)
    assert [e["type"] for e in events][-1:] == ["finish"] and events[-1]["text"] == "answered", events
    assert iid in a.active
    assert [m["content"] for m in a.messages(iid)] == ["slow answer", "answered"]


def _swallow(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except StaleEpoch:
        pass


def test_a_take_starts_the_run_only_of_a_free_instance_at_its_current_epoch(
    pair: Pair, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an idle instance on a: the consumer's take may start its next run (workers/transport.py)
    a = pair.hosts["a"]
    iid = pair.spawn()
    first, second, third = pair.new_run(iid), pair.new_run(iid), pair.new_run(iid)
    assert a.prebegin(iid) == (1, a.runs.retention)

    # When a step was taken whose greenlet has not had its turn yet
    a.taken(iid, first, None)

    # Then the next take does not start its run (it would start ahead of the first, and take its
    # steering); once the first had its turn, it may again
    assert a.prebegin(iid) is None
    a.run_step(iid, first, "one", True)
    assert a.prebegin(iid) == (1, a.runs.retention)

    # And a run the take started at the current epoch is not started again by its step
    run_keys = [
        keys.instance_record(iid),
        keys.run_events(second),
        keys.run_record(second),
        keys.steering(iid),
        keys.run_steered(second),
    ]
    flat = a.runs._begin(keys=run_keys, args=["1", repr(time.time()), iid, str(a.runs.retention)])
    a.taken(iid, second, (1, flat))
    with monkeypatch.context() as m:
        m.setattr(a.runs, "begin", lambda *args: pytest.fail("the step started its run again"))
        a.run_step(iid, second, "two", True)
    assert pair.events(second)[-1]["text"] == "echo: two"

    # But one started at an epoch the instance no longer has here is started again
    a.taken(iid, third, (1, ["stale"]))
    a.attach(iid, pair.move(iid, "a"))
    a.run_step(iid, third, "three", True)
    assert pair.events(third)[-1]["text"] == "echo: three"


def test_a_cancel_announced_between_a_take_that_started_the_run_and_its_step_is_kept(
    pair: Pair, fake_llm: FakeLLM
) -> None:
    # Given a run its step's take started (the step waits for a slot in the worker's pool)
    a = pair.hosts["a"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    run_keys = [
        keys.instance_record(iid),
        keys.run_events(run_id),
        keys.run_record(run_id),
        keys.steering(iid),
        keys.run_steered(run_id),
    ]
    flat = a.runs._begin(keys=run_keys, args=["1", repr(time.time()), iid, str(a.runs.retention)])
    a.taken(iid, run_id, (1, flat))

    # When a cancel is announced before the step runs (the run is `running`: flagged, not ended)
    assert a.runs.cancel(run_id) == (True, "running")
    assert a.cancel_local(run_id)
    a.run_step(iid, run_id, "never answered", True)

    # Then the step ends the run cancelled instead of answering
    events = pair.events(run_id)
    assert events[-1]["type"] == "finish" and events[-1]["finishReason"] == "cancelled", events


def test_parking_an_idle_instance_frees_its_conversation_and_the_next_step_reads_it_again(
    pair: Pair, fake_llm: FakeLLM
) -> None:
    """An attached instance's parsed history, model form and JSON stay in the worker while it
    works; parked (idle for `vfsParkAfter`), it lets go of them with its SQLite connection."""
    import gc
    import tracemalloc

    from regina.runtime.messages import assistant, to_jsonl, user
    from regina.runtime.session import SESSION_PATH

    # Given an instance with a 1 000-message conversation that has just run a step
    a = pair.hosts["a"]
    iid = pair.spawn()
    act = a.active[iid]
    history = [m for i in range(500) for m in (user(f"question {i} " * 20), assistant(f"answer {i} " * 20))]
    act.vfs.write(SESSION_PATH, to_jsonl(history))
    act.session.invalidate()
    tracemalloc.start()
    try:
        a.run_step(iid, pair.new_run(iid), "one more", True)
        # When it is parked
        gc.collect()
        loaded = tracemalloc.get_traced_memory()[0]
        assert a.park_idle(0) == 1
        gc.collect()
        freed = loaded - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Then the conversation's memory is given back (its text alone is ≈ 270 KB)
    assert freed > 400_000, freed
    # And the next step sends the model the whole conversation again
    a.run_step(iid, pair.new_run(iid), "after parking", True)
    sent = [m["content"] for m in fake_llm.requests[-1].messages]
    assert sent[1:] == [m["content"] for m in history] + ["one more", "echo: one more", "after parking"]


def test_reading_the_messages_of_a_parked_instance_leaves_it_parked(pair: Pair) -> None:
    """GET /instances/<id>/messages reopens a parked instance's SQLite file and loads its history;
    the instance is parked again, not left holding both until its next step (forever with
    `idleTimeout` 0: the idle sweep skips instances it parked)."""
    # Given an attached instance that ran a step and was parked
    a = pair.hosts["a"]
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "hello", True)
    act = a.active[iid]
    assert a.park_idle(0) == 1
    # When its messages are read
    assert [m["content"] for m in a.messages(iid)][-2:] == ["hello", "echo: hello"]
    # Then it holds no SQLite connection and no parsed history again
    assert act.parked
    assert act.vfs.inner._conn is None
    assert act.session._messages is None
    # and a step after that reads its conversation as before
    a.run_step(iid, pair.new_run(iid), "again", True)
    assert [m["content"] for m in a.messages(iid)][-4:] == ["hello", "echo: hello", "again", "echo: again"]


def test_a_backup_snapshot_is_taken_off_the_callers_thread(pair: Pair) -> None:
    """SQLite's copy of a large file takes CPU (0.2 s per 100 MiB): on the worker's gevent hub it
    would stop every other instance, the consumer and the heartbeat during each suspend and
    checkpoint. It runs in a thread pool of its own; the caller waits for it."""
    import sys

    from regina import activation

    a = pair.hosts["a"]
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "hello", True)
    path = activation.local_path(a.settings, iid)
    opened_by: list[int] = []
    watching = [True]

    def on_event(event: str, args: tuple[Any, ...]) -> None:
        if watching[0] and event == "sqlite3.connect" and str(args[0]).endswith(path + "?mode=rw"):
            opened_by.append(threading.get_ident())

    sys.addaudithook(on_event)  # for the rest of the process: `watching` turns it off
    try:
        assert a.suspend(iid)["backedUp"]
    finally:
        watching[0] = False
    # The snapshot's connection to the file was opened in another thread
    assert opened_by and threading.get_ident() not in opened_by, opened_by
    # and its backup brings the conversation to another worker
    b = pair.hosts["b"]
    b.attach(iid, pair.move(iid, "b"))
    assert [m["content"] for m in b.messages(iid)][-2:] == ["hello", "echo: hello"]


def test_a_stale_owner_cannot_end_the_new_owners_run_as_failed(pair: Pair) -> None:
    # Given an instance that moved from a to b while a's step of a run was failing
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    b.attach(iid, pair.move(iid, "b"))
    pair.r.hset(keys.run_record(run_id), "status", "running")  # b runs it now

    # When a reports its step's failure
    with pytest.raises(StaleEpoch):
        a.end_failed(iid, run_id, "internal error: ConnectionError (details in the worker log)")

    # Then nothing of b's run changed
    assert pair.r.hget(keys.run_record(run_id), "status") == "running"
    assert pair.events(run_id) == []


def test_a_failed_step_ends_its_run_with_an_error_where_it_is_owned(pair: Pair) -> None:
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    run_id = pair.new_run(iid)
    a.end_failed(iid, run_id, "boom")
    assert pair.r.hget(keys.run_record(run_id), "status") == "failed"
    zero = {"promptTokens": 0, "completionTokens": 0}  # its attempts recorded no tokens
    assert pair.events(run_id)[-1] == {"type": "error", "error": "boom", "usage": zero, "seq": 1, "runId": run_id}
    # and a member the record does not name hands the step back rather than report anything
    other = pair.new_run(iid)
    with pytest.raises(NotHere):
        b.end_failed(iid, other, "boom")
    assert pair.r.hget(keys.run_record(other), "status") == "queued"


def test_a_suspend_is_not_held_up_by_a_tool_thread_pool_full_of_abandoned_calls(pair: Pair) -> None:
    """A tool past its timeout is abandoned but keeps its thread (a thread cannot be stopped):
    snapshots taken in the tools' pool waited behind them, with no bound, and the suspend (the
    instance's lock held) hung for as long as they did."""
    from regina.runtime.tools.runner import thread_pool

    a = pair.hosts["a"]
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "hello", True)
    stuck = threading.Event()
    pool = thread_pool()
    size = int(getattr(pool, "_max_workers", 0))
    assert size, "the tools' pool is a ThreadPoolExecutor here (no gevent in this process)"
    blockers = [pool.submit(stuck.wait, 60) for _ in range(size + 8)]  # every thread taken
    try:
        done: list[Any] = []
        suspender = threading.Thread(target=lambda: done.append(a.suspend(iid)), daemon=True)
        suspender.start()
        suspender.join(15)
        assert done and done[0]["backedUp"], "the suspend waited on the tools' pool"
    finally:
        stuck.set()
        for f in blockers:
            f.result(10)
