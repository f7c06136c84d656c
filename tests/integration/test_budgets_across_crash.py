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
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis

from regina import keys
from regina.runs.stream import _FINISH
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster, Proc
from tests.harness.refusing_proxy import RefusingProxy
from tests.harness.scenarios import backed_up_instance, builtin_schema_tokens
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

MARK = "keep going"
#: The tokens the loop estimates for the built-in tools' schemas (tests/integration/test_budgets.py).
SCHEMAS = builtin_schema_tokens()


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
    # Given maxTokensPerRun 1000 (plus room for the tool schemas every prompt's estimate counts,
    # SCHEMAS) and a run that spent 700 tokens in two steps before its worker died
    c = _started(make_cluster, tmp_path, REGINA_BUDGET__MAX_TOKENS_PER_RUN=str(1000 + SCHEMAS))
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        usage_before = _usage(api, iid)
        fake_llm.push_for(
            MARK,
            _tool(1, (300, 50)),
            _tool(2, (300, 50)),
            Reply(text="never seen", delay=3.0),
            _tool(3, (250 + SCHEMAS, 60)),  # the provider counts the schemas in the prompt
            *[_tool(n, (15, 5)) for n in range(4, 10)],
        )
        body, run_id, _, _ = _kill_during_call(c, api, iid, victim, fake_llm, calls=3)

        # Then the redelivered attempt's one model call is capped to the 300 tokens left (less its
        # prompt), and the run stops on the budget after it (700 + 310 > 1000)
        assert body["finishReason"] == "budget" and "maxTokensPerRun" in body["text"], body
        assert str(1010 + SCHEMAS) in body["text"], body
        assert _calls(fake_llm) == 4
        assert 0 < fake_llm.requests[-1].body["max_tokens"] < 300
        assert body["usage"] == {"promptTokens": 850 + SCHEMAS, "completionTokens": 160}
        assert api.get(f"/runs/{run_id}").json()["usage"] == body["usage"]
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 850 + SCHEMAS,
            "completionTokens": usage_before["completionTokens"] + 160,
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


def test_a_compaction_summary_made_before_the_crash_counts_with_the_one_made_again(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """A summary's tokens were recorded only with the step's next write, after the step's own model
    call: a worker killed during that call left the summary (billed) counted nowhere."""
    # Given compaction at every chat, and a summary that takes over a second (a heartbeat is due)
    c = _started(make_cluster, tmp_path, REGINA_COMPACTION__THRESHOLD="5", REGINA_COMPACTION__KEEP_LAST_N="1")
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        usage_before = _usage(api, iid)
        summary = Reply(text="the summary so far", usage=(100, 10), delay=1.2)
        fake_llm.push_for("You compress conversations", summary, summary)
        fake_llm.push_for(MARK, Reply(text="never seen", delay=3.0), Reply(text="done", usage=(20, 5)))
        # When the worker is killed during the step's model call, after the summary
        body, run_id, record, _ = _kill_during_call(c, api, iid, victim, fake_llm, calls=2)

        # Then the summary was recorded before the kill
        assert record.get("spent") == "0 100 10", record
        # ... and the run counts it with the summary and the answer its redelivery made
        assert body["text"] == "done" and _calls(fake_llm) == 2, body
        assert body["usage"] == {"promptTokens": 220, "completionTokens": 25}
        assert api.get(f"/runs/{run_id}").json()["usage"] == body["usage"]
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 220,
            "completionTokens": usage_before["completionTokens"] + 25,
        }


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


# -- a model answer the worker got and died with, before the run's end ---------------------------

FINISH_SHA = hashlib.sha1(_FINISH.encode()).hexdigest().encode()


@contextlib.contextmanager
def _victim_behind_a_proxy(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> Iterator[tuple[httpx.Client, str, Proc, RefusingProxy]]:
    """(a client of the web, an instance chatted once and backed up, the worker holding it — its
    Redis behind a proxy that can hold a command — and that proxy); a second worker takes over."""
    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b"))
    upstream = urlparse(c.redis_url)
    with (
        RefusingProxy(str(upstream.hostname), int(upstream.port or 6379)) as proxy,
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
    ):
        r.script_load(_FINISH)  # its EVALSHA carries the marker (no NOSCRIPT, then EVAL)
        victim = c.start_worker(env={"REDIS_URL": proxy.url})
        c.start_web()
        with httpx.Client(base_url=c.web.url, timeout=90) as api:
            iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
            assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200
            assert api.post(f"/instances/{iid}/suspend").status_code == 204
            assert api.post(f"/instances/{iid}/resume").status_code == 204
            assert api.get(f"/instances/{iid}").json()["member"] == victim.member_id
            c.start_worker()
            yield api, iid, victim, proxy


def _kill_before_the_end(api: httpx.Client, iid: str, victim: Proc, proxy: RefusingProxy, path: str) -> httpx.Response:
    """Chat MARK on `path` and kill the victim once the model answered and the run's end (its
    finish script) is on its way to Redis: everything the step wrote before is in Redis."""
    proxy.hold(FINISH_SHA, iid.encode())
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/{path}", json={"message": MARK})
        wait_until(proxy.held.is_set, timeout=20, what="the run's end to be held")
        victim.kill()
        resp = chat.result(90)
    assert resp.status_code == 200, resp.text
    return resp


def test_a_streamed_answer_its_worker_died_with_before_the_run_s_end_is_kept_and_counted_once(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """The answer and its tokens were written only by the run's end: a worker that died before it
    had the model asked again, and the first answer's tokens (billed) counted nowhere."""
    with _victim_behind_a_proxy(make_cluster, tmp_path) as (api, iid, victim, proxy):
        usage_before = _usage(api, iid)
        # Given a streamed chat whose model answers (30 + 7 tokens) slowly enough for a heartbeat
        fake_llm.push_for(MARK, Reply(text="the first answer", usage=(30, 7), delay=1.2), Reply(text="again"))
        # When its worker dies after the model answered, with the run's end on its way
        resp = _kill_before_the_end(api, iid, victim, proxy, "chat/stream")

        # Then the redelivered step finishes with the answer the model gave, not asking again
        events = [json.loads(line) for line in resp.text.splitlines() if line]
        assert events[-1]["type"] == "finish", events
        assert events[-1]["text"] == "the first answer", events[-1]
        assert _calls(fake_llm) == 1
        # ... and its tokens count, once
        assert events[-1]["usage"] == {"promptTokens": 30, "completionTokens": 7}
        assert api.get(f"/runs/{events[-1]['runId']}").json()["usage"] == events[-1]["usage"]
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 30,
            "completionTokens": usage_before["completionTokens"] + 7,
        }
        assert [m["content"] for m in api.get(f"/instances/{iid}/messages").json()][-2:] == [MARK, "the first answer"]


def test_a_sync_answer_its_worker_died_with_before_the_run_s_end_counts_with_the_answer_asked_again(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """A sync chat's answer is saved with the run's end; its tokens are recorded before (with the
    heartbeat that follows the model call): asked again, both answers were billed and count."""
    with _victim_behind_a_proxy(make_cluster, tmp_path) as (api, iid, victim, proxy):
        usage_before = _usage(api, iid)
        # Given a sync chat whose model answers (30 + 7 tokens) slowly enough for a heartbeat
        fake_llm.push_for(
            MARK, Reply(text="the first answer", usage=(30, 7), delay=1.2), Reply(text="asked again", usage=(20, 5))
        )
        # When its worker dies after the model answered, with the run's end on its way
        body = _kill_before_the_end(api, iid, victim, proxy, "chat").json()

        # Then the redelivered step asks the model again, and the run counts both calls
        assert body["text"] == "asked again", body
        assert _calls(fake_llm) == 2
        assert body["usage"] == {"promptTokens": 50, "completionTokens": 12}
        assert api.get(f"/runs/{body['runId']}").json()["usage"] == body["usage"]
        assert _usage(api, iid) == {
            "promptTokens": usage_before["promptTokens"] + 50,
            "completionTokens": usage_before["completionTokens"] + 12,
        }


def test_the_usage_so_far_counts_a_redelivered_runs_crashed_attempt_once(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """While a redelivered run waits on the model, the run's and the instance's usage show what
    its crashed attempt recorded, once; at its end, its final usage, once."""
    c = _started(make_cluster, tmp_path)
    with (
        httpx.Client(base_url=c.web.url, timeout=90) as api,
        redis.Redis.from_url(c.redis_url, decode_responses=True) as r,
        cf.ThreadPoolExecutor(1) as pool,
    ):
        iid, victim, _ = backed_up_instance(c, api)
        before = _usage(api, iid)
        # Given a run that spent 23 + 2 tokens in two steps before its worker was killed in its
        # third, and whose redelivered call of that step is held
        fake_llm.push_for(
            MARK,
            _tool(1, (11, 1)),
            _tool(2, (12, 1)),
            Reply(text="never seen", delay=3.0),
            Reply(text="held", usage=(13, 1), delay=6.0),
        )
        sent = len(fake_llm.requests)
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": MARK})
        fake_llm.wait_for_requests(sent + 3, timeout=20)
        (run_id,) = r.zrange(keys.instance_runs(iid), 0, 0)
        victim.kill()
        fake_llm.wait_for_requests(sent + 4, timeout=60)  # the redelivered attempt waits on the model

        # Then the run and the instance show the crashed attempt's tokens, once
        run = api.get(f"/runs/{run_id}").json()
        assert run["status"] == "running" and run["usage"] == {"promptTokens": 23, "completionTokens": 2}, run
        so_far = {"promptTokens": before["promptTokens"] + 23, "completionTokens": before["completionTokens"] + 2}
        assert _usage(api, iid) == so_far

        # ... and at the run's end its usage, in the instance once
        body = chat.result(90).json()
        assert body["text"] == "held" and body["usage"] == {"promptTokens": 36, "completionTokens": 3}, body
        assert api.get(f"/runs/{run_id}").json()["usage"] == body["usage"]
        assert _usage(api, iid) == {
            "promptTokens": before["promptTokens"] + 36,
            "completionTokens": before["completionTokens"] + 3,
        }
