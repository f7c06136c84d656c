"""Budgets across a crash (SPEC §12): a run redelivered after its worker was killed with -9 goes on
counting its budgets from where the crashed attempt left them.

The steps and tokens of the crashed attempt's completed model calls count against `maxSteps` and
`maxTokensPerRun`, `maxSecondsPerRun` counts from the run's first start, and those tokens are in
the run's and the instance's usage once. A run whose step keeps losing its worker ends `failed`
after `limits.maxRunDeliveries` deliveries. Real processes: two workers, fs storage (the journal),
the fake LLM scripting usage exactly.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from regina import keys
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster, Proc
from tests.harness.scenarios import backed_up_instance

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MARK = "keep going"


def _tool(n: int, usage: tuple[int, int]) -> Reply:
    return Reply(tool_calls=[ToolCall("bash", {"command": f"echo step {n}"})], usage=usage)


def _started(make_cluster: Callable[..., Cluster], tmp_path: Path, **env: str) -> Cluster:
    return make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b"), **env).start(
        workers=2
    )


def _usage(api: httpx.Client, iid: str) -> dict[str, int]:
    return dict(api.get(f"/instances/{iid}").json()["usage"])


def _kill_during_call(
    c: Cluster, api: httpx.Client, iid: str, victim: Proc, fake_llm: FakeLLM, calls: int
) -> tuple[dict[str, Any], str, dict[str, str], float]:
    """Chat MARK and kill `victim` while the run's `calls`-th model call waits: (the chat's answer,
    its run id, the run record just before the kill, seconds from the chat to its answer)."""
    with (
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        before = len(fake_llm.requests)
        started = time.monotonic()
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": MARK})
        fake_llm.wait_for_requests(before + calls, timeout=20)
        (run_id,) = r.zrange(keys.instance_runs(iid), 0, 0)
        record = dict(r.hgetall(keys.run_record(run_id)))
        victim.kill()
        resp = chat.result(90)
        took = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    return resp.json(), run_id, record, took


def _calls(fake_llm: FakeLLM) -> int:
    return sum(1 for q in fake_llm.requests if q.last_user_text == MARK)


def test_a_redelivered_run_counts_the_steps_and_tokens_of_its_crashed_attempt(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given maxSteps 3 and a run that took two tool steps before its worker was killed in its third
    c = _started(make_cluster, tmp_path, REGINA_DEFAULTS__MAX_STEPS="3")
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        usage_before = _usage(api, iid)
        fake_llm.push_for(
            MARK,
            _tool(1, (11, 1)),
            _tool(2, (12, 1)),
            Reply(text="never seen", delay=3.0),  # the worker dies while this call waits
            _tool(3, (13, 1)),
            _tool(4, (14, 1)),
            _tool(5, (15, 1)),
            Reply(text="too many steps", usage=(16, 1)),
        )
        body, run_id, record, _ = _kill_during_call(c, api, iid, victim, fake_llm, calls=3)

        # Then the redelivered attempt takes the one step left (3 in all) and stops there
        assert body["finishReason"] == "tool-calls", body
        assert _calls(fake_llm) == 4  # two steps, the killed call, one more step
        # ... and the run's usage is what every completed model call spent, the crashed ones' too
        assert body["usage"] == {"promptTokens": 36, "completionTokens": 3}
        run = api.get(f"/runs/{run_id}").json()
        assert run["status"] == "finished" and run["usage"] == body["usage"], run
        # ... counted once in the instance's usage
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 36,
            "completionTokens": usage_before["completionTokens"] + 3,
        }
        # ... and the run keeps its first start
        assert run["startedAt"] == api.get(f"/runs/{run_id}").json()["startedAt"]
        with redis.Redis.from_url(c.redis_url, decode_responses=True) as r:
            assert r.hget(keys.run_record(run_id), "startedAt") == record["startedAt"]
        # The transcript holds each step once, every tool call with its result
        msgs = api.get(f"/instances/{iid}/messages").json()
        calls = [tc["id"] for m in msgs if m["role"] == "assistant" for tc in m.get("tool_calls") or []]
        assert len(calls) == 3 and calls == [m["tool_call_id"] for m in msgs if m["role"] == "tool"], msgs


def test_a_redelivered_run_stops_at_max_tokens_per_run_counting_its_crashed_attempt(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given maxTokensPerRun 100 and a run that spent 90 tokens in two steps before its worker died
    c = _started(make_cluster, tmp_path, REGINA_BUDGET__MAX_TOKENS_PER_RUN="100")
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        usage_before = _usage(api, iid)
        fake_llm.push_for(
            MARK,
            _tool(1, (40, 5)),
            _tool(2, (40, 5)),
            Reply(text="never seen", delay=3.0),
            *[_tool(n, (15, 5)) for n in range(3, 10)],
        )
        body, run_id, _, _ = _kill_during_call(c, api, iid, victim, fake_llm, calls=3)

        # Then the redelivered attempt makes one model call (90 + 20 >= 100) and stops on the budget
        assert body["finishReason"] == "budget" and "maxTokensPerRun" in body["text"], body
        assert "110" in body["text"], body
        assert _calls(fake_llm) == 4
        assert body["usage"] == {"promptTokens": 95, "completionTokens": 15}
        assert api.get(f"/runs/{run_id}").json()["usage"] == body["usage"]
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 95,
            "completionTokens": usage_before["completionTokens"] + 15,
        }


def test_a_redelivered_run_counts_max_seconds_per_run_from_its_first_start(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given maxSecondsPerRun 6 and a run whose worker is killed a second or so into it
    c = _started(make_cluster, tmp_path, REGINA_BUDGET__MAX_SECONDS_PER_RUN="6")
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        fake_llm.push_for(MARK, _tool(1, (10, 1)), Reply(text="never seen", delay=3.0), Reply(text="slow", delay=30.0))
        body, _, _, took = _kill_during_call(c, api, iid, victim, fake_llm, calls=2)

    # Then the redelivered attempt stops 6 s after the run's first start (the failover alone takes
    # over 3 s: counted afresh from the redelivery, the run would take over 9 s)
    assert body["finishReason"] == "budget" and "maxSecondsPerRun" in body["text"], body
    assert took < 8.5, took
    assert body["usage"] == {"promptTokens": 10, "completionTokens": 1}


def test_a_run_delivered_more_than_max_run_deliveries_times_ends_failed(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given limits.maxRunDeliveries 1: a run whose worker dies is not run again
    c = _started(make_cluster, tmp_path, REGINA_LIMITS__MAX_RUN_DELIVERIES="1")
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        usage_before = _usage(api, iid)
        fake_llm.push_for(MARK, _tool(1, (30, 2)), Reply(text="never seen", delay=3.0))
        body, run_id, _, _ = _kill_during_call(c, api, iid, victim, fake_llm, calls=2)

        # Then the redelivery ends it failed, naming the limit, with what the crashed attempt spent
        assert body["finishReason"] == "error" and "limits.maxRunDeliveries is 1" in body["text"], body
        assert "stopped once" in body["text"], body
        assert _calls(fake_llm) == 2
        run = api.get(f"/runs/{run_id}").json()
        assert run["status"] == "failed" and run["usage"] == {"promptTokens": 30, "completionTokens": 2}, run
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 30,
            "completionTokens": usage_before["completionTokens"] + 2,
        }
        # ... the transcript stays valid and the next chat works
        msgs = api.get(f"/instances/{iid}/messages").json()
        calls = [tc["id"] for m in msgs if m["role"] == "assistant" for tc in m.get("tool_calls") or []]
        assert len(calls) == 1 and calls == [m["tool_call_id"] for m in msgs if m["role"] == "tool"], msgs
        fake_llm.push_for("after", Reply(text="fine"))
        assert api.post(f"/instances/{iid}/chat", json={"message": "after"}).json()["text"] == "fine"
