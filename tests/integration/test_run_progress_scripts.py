"""The run record's side of budgets across a crash, against a real Redis: what `begin` returns to a
step delivered again, how it counts deliveries, and the progress write of a run without a journal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
import redis

from regina import keys
from regina.runs.store import RunStore, parse_begun
from regina.runtime.events import Usage
from regina.runtime.sink import RunProgress
from tests.harness.redis_server import RedisServer


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


def _begin(store: RunStore, iid: str, run_id: str, now: float) -> list[str]:
    """The begin script with a given `now` (the same call sent twice sends the same one)."""
    run_keys = [
        keys.instance_record(iid),
        keys.run_events(run_id),
        keys.run_record(run_id),
        keys.steering(iid),
        keys.run_steered(run_id),
    ]
    return cast(list[str], store._begin(keys=run_keys, args=["1", repr(now), iid, "60"]))


def test_a_step_delivered_again_keeps_the_first_start_and_counts_its_deliveries(r: redis.Redis) -> None:
    store = RunStore(r, 60)
    iid, run_id = "inst-progress-1", "run-progress-1"
    r.hset(keys.instance_record(iid), mapping={"epoch": "1"})
    r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "queued", "createdAt": "999.0"})

    first = parse_begun(_begin(store, iid, run_id, 1000.0))
    assert first.previous_status == "queued" and first.attempts == 1 and first.elapsed == 0.0
    assert first.spent == RunProgress()
    # The same call sent again after a lost reply counts no delivery more
    assert parse_begun(_begin(store, iid, run_id, 1000.0)).attempts == 1

    # The attempt recorded two steps before its worker died; the step is delivered again
    assert store.record_progress(iid, 1, run_id, "2 30 4")
    again = parse_begun(_begin(store, iid, run_id, 1012.5))
    assert again.previous_status == "running" and again.attempts == 2 and again.elapsed == 12.5
    assert again.spent == RunProgress(2, Usage(prompt_tokens=30, completion_tokens=4))
    assert parse_begun(_begin(store, iid, run_id, 1012.5)).attempts == 2  # sent again: the same
    assert parse_begun(_begin(store, iid, run_id, 1020.0)).attempts == 3
    assert r.hget(keys.run_record(run_id), "startedAt") == "1000.0"  # GET /runs shows the first start


def test_progress_is_written_only_by_the_owner_and_only_on_a_running_run(r: redis.Redis) -> None:
    store = RunStore(r, 60)
    iid, run_id = "inst-progress-2", "run-progress-2"
    r.hset(keys.instance_record(iid), mapping={"epoch": "2"})
    r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "running"})
    assert not store.record_progress(iid, 1, run_id, "1 5 5")  # a stale owner: nothing written
    assert r.hget(keys.run_record(run_id), "spent") is None
    assert store.record_progress(iid, 2, run_id, "1 5 5")
    assert r.hget(keys.run_record(run_id), "spent") == "1 5 5"
    r.hset(keys.run_record(run_id), "status", "finished")
    assert store.record_progress(iid, 2, run_id, "2 9 9")  # the owner, but the run ended
    assert r.hget(keys.run_record(run_id), "spent") == "1 5 5"
    assert store.record_progress(iid, 2, "run-never-opened", "1 1 1")
    assert not r.exists(keys.run_record("run-never-opened"))  # never creates a record


def test_a_redelivered_runs_elapsed_time_is_on_redis_clock_not_its_workers(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker B, whose wall clock is 10 minutes ahead of worker A's, takes the run A started: its
    elapsed time (maxSecondsPerRun) must not jump by the skew (nor vanish when B is behind)."""
    import time

    store = RunStore(r, 60)
    iid, run_id = "inst-skew-1", "run-skew-1"
    r.hset(keys.instance_record(iid), mapping={"epoch": "1"})
    r.hset(keys.run_record(run_id), mapping={"instanceId": iid, "status": "queued"})
    assert store.begin(iid, run_id, 1).elapsed == 0.0  # worker A
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 600)  # worker B's clock
    again = store.begin(iid, run_id, 1)
    assert again.attempts == 2 and 0.0 <= again.elapsed < 5.0, again.elapsed
