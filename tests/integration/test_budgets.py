"""Budgets enforced by the server (SPEC §12): tokens before every model call, seconds on the clock.

A private cluster whose config sets `budget.maxTokensPerRun` and `budget.maxSecondsPerRun`; the
fake LLM reports scripted usage, so the numbers are exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from regina.runtime.compaction import SUMMARY_PREFIX
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.harness.scenarios import builtin_schema_tokens

#: The tokens the loop estimates for openai-agent's tool schemas (its four built-in tools). Every
#: model call's prompt estimate includes them, as providers count them, so the token budgets
#: below leave them room: the numbers in the tests are then what the conversation spends.
SCHEMAS = builtin_schema_tokens()


@pytest.fixture(scope="module")
def budget_api(fake_llm: FakeLLM) -> Iterator[httpx.Client]:
    from tests.harness.redis_server import RedisServer

    server = RedisServer().start()
    c = Cluster(
        server.url,
        fake_llm.url,
        env_overrides={
            "REGINA_BUDGET__MAX_TOKENS_PER_RUN": str(100 + SCHEMAS),
            "REGINA_BUDGET__MAX_SECONDS_PER_RUN": "2",
            "REGINA_BUDGET__MAX_TOKENS_PER_INSTANCE": str(400 + SCHEMAS),
        },
    )
    try:
        c.start_worker()
        web = c.start_web()
        with httpx.Client(base_url=web.url, timeout=60) as client:
            yield client
    finally:
        c.stop()
        server.close()


def _spawn(api: httpx.Client) -> str:
    return str(api.post("/agents/openai-agent/instances").json()["instanceId"])


def test_token_budget_stops_the_run_before_the_next_model_call(budget_api: httpx.Client, fake_llm: FakeLLM) -> None:
    api = budget_api
    iid = _spawn(api)
    fake_llm.push_for(
        "count words",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo hi"})], usage=(90, 30)),
        Reply(text="never asked", usage=(1, 1)),
    )
    body = api.post(f"/instances/{iid}/chat", json={"message": "count words"}).json()
    assert body["finishReason"] == "budget"
    assert "maxTokensPerRun" in body["text"] and "120" in body["text"]
    assert body["usage"] == {"promptTokens": 90, "completionTokens": 30}
    assert [r.last_user_text for r in fake_llm.requests] == ["count words"]  # no second call
    assert api.get(f"/runs/{body['runId']}").json()["status"] == "finished"
    assert api.get(f"/instances/{iid}").json()["usage"] == {"promptTokens": 90, "completionTokens": 30}
    # The transcript stays valid: the next chat's request has the tool call and its result.
    fake_llm.reset()
    fake_llm.push_for("next", Reply(text="fine", usage=(10, 5)))
    assert api.post(f"/instances/{iid}/chat", json={"message": "next"}).json()["text"] == "fine"
    (req,) = fake_llm.requests
    calls = [tc["id"] for m in req.messages if m["role"] == "assistant" for tc in m.get("tool_calls", [])]
    assert calls and calls == [m["tool_call_id"] for m in req.messages if m["role"] == "tool"]


def test_a_one_step_answer_past_the_token_budget_ends_the_run_budget(
    budget_api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """Regression: the budget was checked only before each model call, so a run of one step that
    spent 50 + 500 tokens under maxTokensPerRun 100 answered finishReason "stop". The call now
    carries max_tokens (what the budget leaves after the prompt's estimate) and the step that
    reaches the budget ends the run "budget"; its answer is saved and comes first in the text."""
    api = budget_api
    iid = _spawn(api)
    # Given a model that would answer 500 tokens to a 50-token prompt
    fake_llm.push_for("tell me everything", Reply(text="lorem ipsum " * 50, usage=(50, 500)))
    body = api.post(f"/instances/{iid}/chat", json={"message": "tell me everything"}).json()

    # Then the run ended "budget", naming it
    assert body["finishReason"] == "budget" and "maxTokensPerRun" in body["text"], body
    # ... its request was capped below the budget and the model's answer cut there
    (req,) = fake_llm.requests
    cap = req.body["max_tokens"]
    assert 0 < cap < 100
    assert body["usage"] == {"promptTokens": 50, "completionTokens": cap}
    run = api.get(f"/runs/{body['runId']}").json()
    assert run["status"] == "finished" and run["finishReason"] == "budget" and run["usage"] == body["usage"]
    # ... the transcript holds the (cut) answer, which the text starts with
    (answer,) = [m for m in api.get(f"/instances/{iid}/messages").json() if m["role"] == "assistant"]
    assert answer["content"] and body["text"].startswith(answer["content"] + "\n\n")
    # ... and the next chat works
    fake_llm.push_for("short one", Reply(text="ok", usage=(5, 1)))
    assert api.post(f"/instances/{iid}/chat", json={"message": "short one"}).json()["finishReason"] == "stop"


def test_a_prompt_the_budget_cannot_pay_for_is_never_sent(budget_api: httpx.Client, fake_llm: FakeLLM) -> None:
    api = budget_api
    iid = _spawn(api)
    # Given a message whose prompt alone (characters / 4) is more than maxTokensPerRun 100
    body = api.post(f"/instances/{iid}/chat", json={"message": "long " * 100}).json()
    # Then no model call is made and the run ends "budget"
    assert fake_llm.requests == []
    assert body["finishReason"] == "budget" and "maxTokensPerRun" in body["text"], body
    assert body["usage"] == {"promptTokens": 0, "completionTokens": 0}


def test_an_agent_without_a_token_budget_sends_no_max_tokens(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """The shared cluster configures no budget: its requests stay as they were (the direct
    route's cached request frame, no max_tokens)."""
    iid = str(api.post("/agents/openai-agent/instances").json()["instanceId"])
    fake_llm.push_for("unbudgeted", Reply(text="sure", usage=(5, 500)))
    body = api.post(f"/instances/{iid}/chat", json={"message": "unbudgeted"}).json()
    assert body["finishReason"] == "stop" and body["text"] == "sure"
    (req,) = fake_llm.requests
    assert "max_tokens" not in req.body and "max_completion_tokens" not in req.body


def test_instance_token_budget_counts_every_run(budget_api: httpx.Client, fake_llm: FakeLLM) -> None:
    api = budget_api
    iid = _spawn(api)
    for i in range(4):
        fake_llm.push_for(f"turn {i}", Reply(text=f"answer {i}", usage=(80, 20)))
        assert api.post(f"/instances/{iid}/chat", json={"message": f"turn {i}"}).json()["finishReason"] == "stop"
    body = api.post(f"/instances/{iid}/chat", json={"message": "one more"}).json()
    assert body["finishReason"] == "budget" and "maxTokensPerInstance" in body["text"]
    assert api.get(f"/instances/{iid}").json()["usage"] == {"promptTokens": 320, "completionTokens": 80}


def test_time_budget_cuts_a_slow_model_call_short(budget_api: httpx.Client, fake_llm: FakeLLM) -> None:
    api = budget_api
    iid = _spawn(api)
    fake_llm.push_for("slow", Reply(text="too slow", delay=20))
    started = time.monotonic()
    body = api.post(f"/instances/{iid}/chat", json={"message": "slow"}).json()
    assert time.monotonic() - started < 10
    assert body["finishReason"] == "budget" and "maxSecondsPerRun" in body["text"]
    fake_llm.push_for("quick", Reply(text="quick answer"))
    assert api.post(f"/instances/{iid}/chat", json={"message": "quick"}).json()["text"] == "quick answer"


def test_a_run_that_ends_in_a_model_error_counts_what_it_spent(budget_api: httpx.Client, fake_llm: FakeLLM) -> None:
    """A tool step spent tokens, then the provider failed: the run's and the instance's usage
    count that step (else runs ending in errors would pass maxTokensPerInstance uncounted)."""
    api = budget_api
    iid = _spawn(api)
    fake_llm.push_for(
        "then fail",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo hi"})], usage=(40, 10)),
        Reply(error_status=500, error_message="provider down"),
    )
    body = api.post(f"/instances/{iid}/chat", json={"message": "then fail"}).json()
    assert "provider down" in body.get("error", "") or "provider down" in body.get("text", ""), body
    run = api.get(f"/runs/{body['runId']}").json()
    assert run["status"] == "failed" and run["usage"] == {"promptTokens": 40, "completionTokens": 10}, run
    assert api.get(f"/instances/{iid}").json()["usage"] == {"promptTokens": 40, "completionTokens": 10}


def _fleet_entry(api: httpx.Client, iid: str) -> dict[str, Any]:
    """The instance's entry in the fleet view (paged through)."""
    params = {"agent": "openai-agent", "limit": "1000"}
    while True:
        resp = api.get("/instances", params=params)
        found = [item for item in resp.json() if item["instanceId"] == iid]
        if found:
            return dict(found[0])
        params["cursor"] = resp.headers["X-Next-Cursor"]


def test_usage_so_far_includes_what_the_running_run_spent(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """Regression: while a run ran, `GET /runs/<id>` showed usage 0 although its record had its
    progress, and `GET /instances/<id>` and the fleet view counted the run only at its end."""
    iid = str(api.post("/agents/openai-agent/instances").json()["instanceId"])
    # Given a run whose first step spent 40 + 10 tokens and whose second model call is held
    fake_llm.push_for(
        "held run",
        Reply(tool_calls=[ToolCall("bash", {"command": "echo hi"})], usage=(40, 10)),
        Reply(text="done", usage=(5, 1), delay=5),
    )
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "held run"}) as resp:
        run_id = resp.headers["X-Run-Id"]
        lines = (json.loads(line) for line in resp.iter_lines() if line)
        assert next(e for e in lines if e["type"] == "step-finish")["usage"]["promptTokens"] == 40
        fake_llm.wait_for_requests(2)

        # Then while it waits, the run, the instance and the fleet view show what it spent so far
        run = api.get(f"/runs/{run_id}").json()
        assert run["status"] == "running" and run["usage"] == {"promptTokens": 40, "completionTokens": 10}, run
        assert api.get(f"/instances/{iid}").json()["usage"] == {"promptTokens": 40, "completionTokens": 10}
        entry = _fleet_entry(api, iid)
        assert entry["runningRun"] == run_id and entry["usage"] == {"promptTokens": 40, "completionTokens": 10}
        assert [e for e in lines if e["type"] == "finish"][0]["usage"] == {"promptTokens": 45, "completionTokens": 11}

    # ... and once it ended, its tokens are counted once
    assert api.get(f"/runs/{run_id}").json()["usage"] == {"promptTokens": 45, "completionTokens": 11}
    assert api.get(f"/instances/{iid}").json()["usage"] == {"promptTokens": 45, "completionTokens": 11}
    assert _fleet_entry(api, iid)["usage"] == {"promptTokens": 45, "completionTokens": 11}


def test_a_compaction_summary_is_capped_by_the_token_budget_and_a_cut_one_is_not_used(
    make_cluster: Any, fake_llm: FakeLLM
) -> None:
    """A compaction summary is a model call the run pays for: it was sent without max_tokens, so a
    long summary went past maxTokensPerRun by as much as the model wrote. Its answer is now capped
    to what the budget leaves after its prompt, and a summary the cap cut does not replace the
    conversation (the run then ends `budget`, the history as it was)."""
    c = make_cluster(
        REGINA_BUDGET__MAX_TOKENS_PER_RUN=str(200 + SCHEMAS),
        REGINA_COMPACTION__THRESHOLD="5",
        REGINA_COMPACTION__KEEP_LAST_N="1",
    ).start(workers=1)
    with httpx.Client(base_url=c.web.url, timeout=60) as api:
        iid = _spawn(api)
        fake_llm.push_for("first words", Reply(text="first answer", usage=(10, 2)))
        assert api.post(f"/instances/{iid}/chat", json={"message": "first words"}).json()["finishReason"] == "stop"
        before = api.get(f"/instances/{iid}/messages").json()
        fake_llm.reset()

        # Given a model that would write a summary far longer than the budget
        fake_llm.push_for("You compress conversations", Reply(text="summary " * 2000, usage=(100, 4000)))
        fake_llm.push_for("second words", Reply(text="never asked", usage=(1, 1)))
        body = api.post(f"/instances/{iid}/chat", json={"message": "second words"}).json()

        # Then the summary's request carried the budget's cap, below the budget
        (summary,) = [r for r in fake_llm.requests if "You compress" in json.dumps(r.messages)]
        cap = summary.body.get("max_tokens") or summary.body.get("max_completion_tokens")
        assert cap is not None and 0 < cap < 200 + SCHEMAS, summary.body
        # ... the cut summary replaced nothing, and the run ended on the budget it spent
        assert body["finishReason"] == "budget" and "maxTokensPerRun" in body["text"], body
        after = api.get(f"/instances/{iid}/messages").json()
        assert after[: len(before)] == before
        assert not any(str(m.get("content")).startswith(SUMMARY_PREFIX) for m in after), after
        assert [r.last_user_text for r in fake_llm.requests if "You compress" not in json.dumps(r.messages)] == []
