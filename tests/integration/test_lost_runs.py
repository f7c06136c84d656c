"""A run nothing holds any more ends `failed` with an error event; a slow run never does.

Real processes on a Redis of their own, `limits.lostRunAfter` 2 s (memberTtl 3 s, heartbeat
0.5 s: a lost run ends some 6 s after it was last known held). A lost run is made the way it
happens: a web process's chat cut short right after its open script (the same core calls,
`tests/harness/web_steps.py`), or a step whose end Redis refuses to write twice in a row (a proxy
in front of the worker's Redis refuses the run's finish script, `RefusingProxy`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import httpx
import pytest
import redis

from regina import keys
from regina.clock import redis_now
from regina.instances import InstanceStore
from regina.runs.lost import sweep_lost_runs
from regina.runs.steering import encode, new_steer
from regina.runs.store import RunStore
from regina.runs.stream import _FINISH, RunPublisher
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.refusing_proxy import RefusingProxy
from tests.harness.waiting import wait_until
from tests.harness.web_steps import coordinator, open_run_and_stop
from workers.dispatcher import CeleryDispatcher

pytestmark = pytest.mark.slow

AGENTS = str(Path(__file__).resolve().parents[1] / "agents")
LOST_AFTER = {"REGINA_LIMITS__LOST_RUN_AFTER": "2"}
#: How long a lost run may take to end here: lostRunAfter + memberTtl + sweeps, with room.
ENDS_WITHIN = 15.0


def _last_event(r: redis.Redis, run_id: str) -> dict[str, object]:
    return dict(json.loads(r.xrevrange(keys.run_events(run_id), count=1)[0][1]["e"]))


def slow_run_and_the_next(api: httpx.Client, fake_llm: FakeLLM, iid: str) -> list[httpx.Response]:
    """Chat "slow" (a 10 s model call: longer than lostRunAfter + memberTtl), then "next" queued
    behind it; both answered (their responses, in that order)."""
    fake_llm.push_for("slow", Reply(text="slow answer", delay=10.0))
    fake_llm.push_for("next", Reply(text="next answer"))
    with cf.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "slow"})
        wait_until(lambda: any(q.last_user_text == "slow" for q in fake_llm.requests), timeout=20)
        nxt = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "next"})
        assert slow.result(30).json()["text"] == "slow answer"
        assert nxt.result(30).json()["text"] == "next answer"
        return [slow.result(), nxt.result()]


def _status(api: httpx.Client, run_id: str) -> str:
    return str(api.get(f"/runs/{run_id}").json()["status"])


@pytest.fixture
def lossy(make_cluster: Callable[..., Cluster]) -> Iterator[tuple[Cluster, httpx.Client, redis.Redis]]:
    c = make_cluster(**LOST_AFTER).start(workers=1)
    with (
        httpx.Client(base_url=c.web.url, timeout=60) as api,
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
    ):
        yield c, api, r


def test_a_run_recorded_by_a_web_killed_before_it_queued_the_step_ends_failed(
    lossy: tuple[Cluster, httpx.Client, redis.Redis],
) -> None:
    # Given a suspended instance (a chat's open then pushes no step: the web resumes it first)
    c, api, r = lossy
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "hello"}).status_code == 200
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    # When a web process records a chat run with an Idempotency-Key and dies before queueing it
    coord = coordinator(c.redis_url, AGENTS)
    run_id = open_run_and_stop(coord, iid, "lost on the way", idempotency_key="k-lost")
    assert _status(api, run_id) == "queued"
    assert r.llen(keys.instance_queue(iid)) == 0
    pool = cf.ThreadPoolExecutor(1)
    follower = pool.submit(lambda: [json.loads(line) for line in api.get(f"/runs/{run_id}/events").iter_lines()])

    # Then the run ends failed, its follower gets its error event, and the instance is not busy
    wait_until(lambda: _status(api, run_id) == "failed", timeout=ENDS_WITHIN, what="the lost run to end")
    shown = api.get(f"/runs/{run_id}").json()
    assert shown["finishReason"] == "error" and "the run was lost" in shown["error"], shown
    events = follower.result(10)
    assert events[-1]["type"] == "error" and "the run was lost" in events[-1]["error"], events
    assert _last_event(r, run_id) == events[-1]
    assert r.zcard(keys.instance_runs(iid)) == 0
    assert not r.zscore(keys.RUNS_OPEN, run_id)
    busy = api.post(f"/instances/{iid}/chat", json={"message": "anyone?", "whenBusy": "reject"})
    assert busy.status_code == 200, busy.text
    # and the key's retry does the work (it never started), once
    same = {"json": {"message": "lost on the way"}, "headers": {"Idempotency-Key": "k-lost"}}
    retry = api.post(f"/instances/{iid}/chat", **same)
    assert retry.status_code == 200 and retry.json()["runId"] != run_id, retry.text
    assert retry.json()["finishReason"] == "stop"
    again = api.post(f"/instances/{iid}/chat", **same)
    assert again.json()["runId"] == retry.json()["runId"]
    pool.shutdown()


def test_a_step_whose_error_could_not_be_written_ends_its_run_failed(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    # Given a worker whose Redis refuses the run's finish script (the step's own end, its error
    # event from the task, and that error again from the step's Strategy: each sent twice)
    c = make_cluster(**LOST_AFTER)
    upstream = urlparse(c.redis_url)
    with (
        RefusingProxy(str(upstream.hostname), int(upstream.port or 6379)) as proxy,
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
    ):
        c.start_worker(env={"REDIS_URL": proxy.url})
        c.start_web()
        with httpx.Client(base_url=c.web.url, timeout=60) as api:
            iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
            assert api.post(f"/instances/{iid}/chat", json={"message": "hello"}).status_code == 200
            finish_sha = hashlib.sha1(_FINISH.encode()).hexdigest().encode()
            proxy.refuse(finish_sha, keys.instance_record(iid).encode())
            pool = cf.ThreadPoolExecutor(1)
            # When a chat's step fails to end (Redis twice) and publishing its error fails too
            chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "doomed"})
            run_id = wait_until(lambda: r.zrange(keys.instance_runs(iid), 0, 0), what="the run")[0]
            wait_until(lambda: "could not report the failure" in c.workers[0].log(), timeout=20, what="both failures")
            assert proxy.refused >= 3
            assert _status(api, run_id) == "running"

            # Then the run ends failed with its error event, and the chat answers with it
            wait_until(lambda: _status(api, run_id) == "failed", timeout=ENDS_WITHIN, what="the lost run to end")
            answer = chat.result(20)
            assert answer.status_code == 200 and answer.json()["finishReason"] == "error", answer.text
            assert "the run was lost" in answer.json()["text"]
            last = _last_event(r, run_id)
            assert last["type"] == "error" and last["runId"] == run_id
            # and the instance takes the next chat at once (whenBusy reject: nothing is busy)
            proxy.allow()
            fake_llm.push(Reply(text="back"))
            nxt = api.post(f"/instances/{iid}/chat", json={"message": "again", "whenBusy": "reject"})
            assert nxt.status_code == 200 and nxt.json()["text"] == "back", nxt.text
            pool.shutdown()


def test_the_steering_a_lost_run_took_is_applied_by_the_instance_s_next_run(
    lossy: tuple[Cluster, httpx.Client, redis.Redis], fake_llm: FakeLLM
) -> None:
    """The sweep ended a run that had taken steering messages (its step's start moved them into
    the run's steering journal) and left them there: they were never applied, without a trace."""
    # Given a suspended instance with two steers waiting
    c, api, r = lossy
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "hello"}).status_code == 200
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    receipts = [api.post(f"/instances/{iid}/steer", json={"message": m}).json()["steerId"] for m in ("left", "right")]
    # When a run takes them at its step's start and nothing runs it any more (a web killed before
    # it queued the step; a worker that started it and stopped, as `RunStore.begin` does)
    run_id = open_run_and_stop(coordinator(c.redis_url, AGENTS), iid, "lost with steering")
    epoch = int(r.hget(keys.instance_record(iid), "epoch") or 0)
    assert RunStore(r).begin(iid, run_id, epoch).kind == "run"
    assert r.llen(keys.steering(iid)) == 0 and r.llen(keys.run_steered(run_id)) == 2
    wait_until(lambda: _status(api, run_id) == "failed", timeout=ENDS_WITHIN, what="the lost run to end")

    # Then they wait for the instance again, and its next run applies them with their receipts
    fake_llm.push_for("next one", Reply(text="steered"))
    nxt = api.post(f"/instances/{iid}/chat", json={"message": "next one"})
    assert nxt.status_code == 200 and nxt.json()["text"] == "steered", nxt.text
    events = [json.loads(line) for line in api.get(f"/runs/{nxt.json()['runId']}/events").text.splitlines()]
    assert [e["steerId"] for e in events if e["type"] == "steer-applied"] == receipts
    users = [m["content"] for m in api.get(f"/instances/{iid}/messages").json() if m["role"] == "user"]
    assert users[-3:] == ["left", "right", "next one"], users


def test_a_lost_run_gives_back_only_the_steering_after_its_last_receipt() -> None:
    """A run applies what it takes in the order it took it, with a `steer-applied` receipt once
    the message is in its conversation: what follows its last receipt never got there. Those go
    back to the head of the instance's steering list, before the steers sent since, once."""
    with RedisServer() as server, redis.Redis.from_url(server.url, decode_responses=True) as r:
        (run_id,) = _lost_runs(r, 1, "s")
        iid = str(r.hget(keys.run_record(run_id), "instanceId"))
        epoch = int(r.hget(keys.instance_record(iid), "epoch") or 0)
        runs = RunStore(r)
        # Given a run that took three steers, applied the first and then was lost
        taken = [new_steer("one"), new_steer("two"), new_steer("three")]
        for steer in taken:
            assert runs.steer(iid, steer)[0] == "ok"
        assert runs.begin(iid, run_id, epoch).kind == "run"
        publisher = RunPublisher(r, run_id, iid, 60, epoch=epoch)
        publisher.publish({"type": "steer-applied", "steerId": taken[0].steer_id, "message": "one"})
        publisher.publish({"type": "text-delta", "textDelta": "thinking"})
        later = new_steer("sent since")
        assert runs.steer(iid, later)[0] == "ok"
        # When the sweep ends it (marked, then confirmed), and runs again
        time.sleep(0.05)
        assert _sweep(r, 0.1)[0] == 0
        time.sleep(0.2)
        assert _sweep(r, 0.1)[0] == 1
        assert _sweep(r, 0.1)[0] == 0
        # Then the steers it never applied wait first, in their order, once
        assert r.lrange(keys.steering(iid), 0, -1) == [encode(taken[1]), encode(taken[2]), encode(later)]
        assert r.hget(keys.run_record(run_id), "status") == "failed"


def test_a_slow_run_and_the_run_queued_behind_it_are_never_taken_for_lost(
    lossy: tuple[Cluster, httpx.Client, redis.Redis], fake_llm: FakeLLM
) -> None:
    # Given a model call much longer than lostRunAfter + memberTtl, and a run queued behind it
    _c, api, r = lossy
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    # Then both finish, the sweep having looked at them (they stay in its index while open)
    for resp in slow_run_and_the_next(api, fake_llm, iid):
        run = r.hgetall(keys.run_record(resp.json()["runId"]))
        assert run["status"] == "finished" and "lostAt" not in run, run
        # A run that ended leaves the sweep's index at its end: at a fleet's chats/s the index
        # holds the open runs, not every run of the last lostRunAfter seconds.
        assert r.zscore(keys.RUNS_OPEN, resp.json()["runId"]) is None


def test_a_sweep_costs_the_runs_older_than_the_bound_not_the_runs_open() -> None:
    """Counted with Redis's `INFO commandstats`: 20 or 2 000 runs opened just now (queued on a
    live member's instances) cost one sweep the same commands; none of them is looked at."""

    def sweep_commands(r: redis.Redis) -> int:
        redis_now(r)  # the process's clock read (once per 30 s) is not the sweep's
        r.delete(keys.SWEEP_RUNS_LOCK)
        r.config_resetstat()
        waiting = CeleryDispatcher(cast(Any, None), r).waiting_instances
        assert sweep_lost_runs(r, waiting, 10.0, 120.0, 3.0, 3600.0) == 0
        stats = cast(dict[str, dict[str, Any]], r.info("commandstats"))
        return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))

    def open_runs(r: redis.Redis, n: int, prefix: str) -> None:
        store, runs = InstanceStore(r), RunStore(r)
        for i in range(n):
            iid = f"openai-agent-{prefix}{i:06d}"
            store.create(iid, "openai-agent", "live-member")
            assert runs.open(iid, f"run-{prefix}{i:06d}", step_message="step").kind == "ok"

    with RedisServer() as server, redis.Redis.from_url(server.url, decode_responses=True) as r:
        r.set(keys.member("live-member"), "127.0.0.1:1")
        r.sadd(keys.MEMBERS, "live-member")
        open_runs(r, 20, "a")
        small = sweep_commands(r)
        open_runs(r, 1980, "b")
        large = sweep_commands(r)
        assert r.zcard(keys.RUNS_OPEN) == 2000
    assert large == small, f"one sweep sent {small} commands with 20 runs open and {large} with 2000"


def _lost_runs(r: redis.Redis, n: int, prefix: str) -> list[str]:
    """`n` runs opened on instances of a live member and never queued (a web killed meanwhile)."""
    r.set(keys.member("m-lost"), "127.0.0.1:1")
    r.sadd(keys.MEMBERS, "m-lost")
    store, runs = InstanceStore(r), RunStore(r)
    ids = []
    for i in range(n):
        iid = f"openai-agent-{prefix}{i:05d}"
        store.create(iid, "openai-agent", "m-lost")
        assert runs.open(iid, f"run-{prefix}{i:05d}").kind == "ok"
        ids.append(f"run-{prefix}{i:05d}")
    return ids


def _sweep(r: redis.Redis, member_ttl: float) -> tuple[int, dict[str, int]]:
    r.delete(keys.SWEEP_RUNS_LOCK)
    r.config_resetstat()
    ended = sweep_lost_runs(r, lambda ids: set(), 1.0, 0.01, member_ttl, 60.0)
    stats = cast(dict[str, dict[str, Any]], r.info("commandstats"))
    return ended, {k: int(v["calls"]) for k, v in stats.items()}


def test_a_lost_run_ends_with_the_tokens_its_attempts_recorded_in_its_and_its_instances_usage() -> None:
    """The run's recorded progress (`spent`) is nowhere else: the sweep's end is its usage."""
    with RedisServer() as server, redis.Redis.from_url(server.url, decode_responses=True) as r:
        (run_id,) = _lost_runs(r, 1, "t")
        iid = r.hget(keys.run_record(run_id), "instanceId")
        epoch = int(r.hget(keys.instance_record(iid), "epoch") or 0)
        RunStore(r).begin(iid, run_id, epoch)
        assert RunStore(r).record_progress(iid, epoch, run_id, "7 50000 3000")
        time.sleep(0.05)
        assert _sweep(r, 0.1)[0] == 0  # marked
        time.sleep(0.2)
        assert _sweep(r, 0.1)[0] == 1  # confirmed: ended
        run = r.hgetall(keys.run_record(run_id))
        assert run["status"] == "failed" and (run["promptTokens"], run["completionTokens"]) == ("50000", "3000")
        assert r.hmget(keys.instance_record(iid), "promptTokens", "completionTokens") == ["50000", "3000"]
        assert _last_event(r, run_id)["usage"] == {"promptTokens": 50000, "completionTokens": 3000}


def test_a_sweep_reads_each_lost_run_once_and_reaches_the_runs_behind_the_first_batch() -> None:
    """600 runs lost at once: the 500 marked first waited at the index's front for their
    confirmation and the sweep read them again in each of its 20 batches, never the last 100."""
    with RedisServer() as server, redis.Redis.from_url(server.url, decode_responses=True) as r:
        ids = _lost_runs(r, 600, "u")
        time.sleep(0.05)
        ended, calls = _sweep(r, 60.0)
        assert ended == 0 and calls["cmdstat_hmget"] <= 3 * 600, calls  # the run, its instance, the mark: once
        assert all(r.hexists(keys.run_record(run_id), "lostAt") for run_id in ids)
        ended, calls = _sweep(r, 60.0)  # nothing is due: nothing read again
        assert ended == 0 and calls.get("cmdstat_hmget", 0) == 0, calls
