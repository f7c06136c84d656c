"""`GET /runs/<id>/events?after=N` with N past the events of a run still going (SPEC §12): the
follow ends when the run does, with whatever came after N (here nothing), not after
limits.requestTimeout with a false "did not finish"."""

from __future__ import annotations

import json
import time

import httpx
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_runs import Stream, run_of, spawn


def test_events_after_a_seq_past_the_end_stop_when_the_run_ends(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="a slow answer", delay=2))
    chat = Stream(api, iid, "take your time")
    run_id = chat.id()
    assert run_of(api, run_id)["status"] in ("queued", "running")  # followed while it goes on
    started = time.monotonic()
    with api.stream("GET", f"/runs/{run_id}/events", params={"after": 1000}, timeout=20) as resp:
        assert resp.status_code == 200
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    took = time.monotonic() - started
    assert lines == []  # no event has a seq past 1000, and no error either
    assert took < 10, took
    assert chat.until("finish")["text"] == "a slow answer"
    assert run_of(api, run_id)["status"] == "finished"


def test_a_followed_run_whose_record_goes_ends_the_follow_with_an_error_at_once(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    """Nothing could end that wait but the run's own end (and each idle wake would keep its
    instance served for it): the follower is told at its next idle wake."""
    iid = spawn(api)
    fake_llm.push(Reply(text="too late", delay=4))
    chat = Stream(api, iid, "slowly")
    run_id = chat.id()
    wait_until(lambda: run_of(api, run_id)["status"] == "running", timeout=10, what="the run to start")
    redis.Redis.from_url(cluster.redis_url).delete(f"regina:run:{run_id}")  # evicted, say
    started = time.monotonic()
    event = chat.until("error", timeout=10)
    assert run_id in event["error"] and "no longer exists" in event["error"], event
    assert time.monotonic() - started < 2.5  # not the run's finish, 4 s after its model call began
