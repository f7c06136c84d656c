"""Every idle timer runs on Redis's clock: a web or worker whose own clock is off does not skew it."""

from __future__ import annotations

import time

import pytest

from regina.instances import InstanceStore
from regina.redis_conn import connect
from tests.harness.redis_server import RedisServer

SKEW = 3600.0  # this process's clock runs an hour ahead of the cluster's


@pytest.fixture
def store(redis_server: RedisServer) -> InstanceStore:
    return InstanceStore(connect(redis_server.url))


def _redis_now(store: InstanceStore) -> float:
    sec, usec = store.r.time()
    return sec + usec / 1e6


def test_last_active_is_written_with_redis_time(store: InstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)
    iid = f"openai-agent-{int(real() * 1e6):024x}"[-37:]
    rec = store.create(iid, "openai-agent", "nobody")
    try:
        for touched in (lambda: None, lambda: store.touch(iid), lambda: store.touch_and_check(iid)):
            touched()
            last = store.get(iid).last_active  # type: ignore[union-attr]
            assert abs(last - _redis_now(store)) < 5, (
                f"lastActive {last} is off Redis time by {last - _redis_now(store):.0f}s"
            )
        assert abs(store.now() - _redis_now(store)) < 5
        assert abs(rec.created_at - _redis_now(store)) < 5
    finally:
        store.delete(iid, "openai-agent")


def test_a_chat_open_and_finish_write_redis_time_without_calling_time(
    store: InstanceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open and finish scripts take Redis's clock as the process keeps it (regina/clock.py):
    no TIME inside them, and a process clock an hour off still writes Redis time."""
    from regina import clock
    from regina.runs.store import RunStore
    from regina.runs.stream import RunPublisher

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)
    monkeypatch.setattr(clock, "_synced", None)  # read Redis's clock afresh under the skew
    iid = f"openai-agent-{int(real() * 1e6):024x}"[-37:]
    store.create(iid, "openai-agent", "nobody")
    runs = RunStore(store.r)
    try:
        before = int(store.r.info("commandstats").get("cmdstat_time", {}).get("calls", 0))
        opened = runs.open(iid, "run-clock-1")
        RunPublisher(store.r, "run-clock-1", iid, 60, seq=0).publish({"type": "finish", "text": "ok"})
        after = int(store.r.info("commandstats").get("cmdstat_time", {}).get("calls", 0))
        assert opened.kind == "ok"
        assert abs(opened.record.last_active - _redis_now(store)) < 5  # type: ignore[union-attr]
        last = store.get(iid).last_active  # type: ignore[union-attr]
        assert abs(last - _redis_now(store)) < 5, f"lastActive off Redis time by {last - _redis_now(store):.0f}s"
        finished = float(store.r.hget("regina:run:run-clock-1", "finishedAt"))  # type: ignore[arg-type]
        assert abs(finished - _redis_now(store)) < 5
        assert after - before <= 1  # at most the clock's first read; none inside the scripts
    finally:
        store.delete(iid, "openai-agent")
