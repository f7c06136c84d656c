"""The `delegate` tool across real workers: pairing, reuse, resume, depth limit, refusals.

`boss-agent` may delegate to `helper-agent`, which may delegate back to `boss-agent` (a new
instance each time, since every caller owns its children). The fake model is scripted by a
default reply function that reads who it is from the system prompt.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time
from typing import Any

import httpx

from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall
from tests.harness.processes import ROOT, Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def script(req: RecordedRequest) -> Reply:
    """BOSS delegates "ask: …" to the helper and "chain: …" to the other agent, and relays answers;
    HELPER answers directly, or delegates back on "chain: …"."""
    msgs = req.messages
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
    me = "BOSS" if "You are BOSS" in system else "HELPER"
    if msgs[-1]["role"] == "tool":
        return Reply(text=f"{me} relays: {msgs[-1]['content']}")
    text = req.last_user_text
    if text.startswith("chain:"):
        other = "helper-agent" if me == "BOSS" else "boss-agent"
        return Reply(tool_calls=[ToolCall("delegate", {"agentType": other, "message": text})])
    if me == "BOSS" and text.startswith("ask:"):
        return Reply(tool_calls=[ToolCall("delegate", {"agentType": "helper-agent", "message": text[4:].strip()})])
    if me == "BOSS" and text.startswith("misuse:"):
        return Reply(tool_calls=[ToolCall("delegate", {"agentType": "tool-agent", "message": "hi"})])
    return Reply(text=f"{me} answers: {text}")


def helpers(api: httpx.Client) -> set[str]:
    return {i["instanceId"] for i in api.get("/agents/helper-agent/instances").json()}


def test_delegation_reuses_the_callers_child_across_turns_and_workers(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    fake_llm.default = script
    before = helpers(api)
    boss = spawn(api, "boss-agent")
    first = api.post(f"/instances/{boss}/chat", json={"message": "ask: what is 2+2?"}).json()
    assert first["text"] == "BOSS relays: HELPER answers: what is 2+2?"
    (child,) = helpers(api) - before
    # The child was placed on the other worker; the answer crossed workers through Redis.
    assert api.get(f"/instances/{child}").json()["member"] != api.get(f"/instances/{boss}").json()["member"]

    # The boss's first model request: the delegate tool (only its delegates as choices) and the
    # system prompt section listing them.
    boss_req = next(r for r in fake_llm.requests if "You are BOSS" in r.all_text)
    system = boss_req.messages[0]["content"]
    assert "## Delegates" in system
    assert "`helper-agent`" in system and "Test agent that answers for the boss" in system
    assert "Helper here, ready to help." in system
    delegate = next(t for t in boss_req.body["tools"] if t["function"]["name"] == "delegate")["function"]
    assert delegate["parameters"]["properties"]["agentType"]["enum"] == ["helper-agent"]
    assert "required" in delegate["parameters"] and set(delegate["parameters"]["required"]) == {"agentType", "message"}

    # Next turn: the same child, with its memory of the first question.
    second = api.post(f"/instances/{boss}/chat", json={"message": "ask: and 3+3?"}).json()
    assert second["text"] == "BOSS relays: HELPER answers: and 3+3?"
    assert helpers(api) - before == {child}

    # A suspended child is resumed, not replaced.
    assert api.post(f"/instances/{child}/suspend").status_code == 204
    third = api.post(f"/instances/{boss}/chat", json={"message": "ask: still there?"}).json()
    assert third["text"] == "BOSS relays: HELPER answers: still there?"
    assert helpers(api) - before == {child}
    asked = [m["content"] for m in api.get(f"/instances/{child}/messages").json() if m["role"] == "user"]
    assert asked == ["what is 2+2?", "and 3+3?", "still there?"]

    # Deleting the caller deletes the child it owns (no other caller could reach it); a new
    # boss gets a new child.
    assert api.delete(f"/instances/{boss}").status_code == 204
    assert api.get(f"/instances/{child}").status_code == 404
    assert helpers(api) - before == set()
    boss2 = spawn(api, "boss-agent")
    api.post(f"/instances/{boss2}/chat", json={"message": "ask: new?"})
    (new_child,) = helpers(api) - before
    assert new_child != child


def test_a_target_not_in_delegates_is_refused_with_a_clear_tool_error(api: httpx.Client, fake_llm: FakeLLM) -> None:
    fake_llm.default = script
    boss = spawn(api, "boss-agent")
    answer = api.post(f"/instances/{boss}/chat", json={"message": "misuse: go"}).json()["text"]
    error = json.loads(answer.removeprefix("BOSS relays: "))["error"]
    assert error == "agent 'tool-agent' is not one of this agent's delegates; it may delegate to: helper-agent"


def test_an_agent_without_delegates_has_no_delegate_tool(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api, "openai-agent")
    api.post(f"/instances/{iid}/chat", json={"message": "hi"})
    assert "delegate" not in fake_llm.requests[-1].tool_names
    assert "## Delegates" not in fake_llm.requests[-1].all_text


def test_the_sixth_delegation_in_a_chain_is_refused(api: httpx.Client, fake_llm: FakeLLM) -> None:
    fake_llm.default = script
    before = helpers(api)
    boss = spawn(api, "boss-agent")
    text = api.post(f"/instances/{boss}/chat", json={"message": "chain: go deep"}, timeout=120).json()["text"]
    # boss(0) → helper(1) → boss(2) → helper(3) → boss(4) → helper(5) → refused.
    assert "delegation depth limit reached: this run is already 5 delegations deep" in text
    assert text.count("relays:") == 6
    assert len(helpers(api) - before) == 3


def test_the_offline_demo_agent_delegates_to_the_librarian(make_cluster: Any) -> None:
    c: Cluster = make_cluster(REGINA_AGENTS_DIR=str(ROOT / "agents"))
    c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as demo_api:
        iid = spawn(demo_api, "demo")
        resp = demo_api.post(f"/instances/{iid}/chat", json={"message": "ask librarian where are my notes?"})
        history = demo_api.get(f"/instances/{iid}/messages").json()
    calls = [c["function"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert [(f["name"], json.loads(f["arguments"])) for f in calls] == [
        ("delegate", {"agentType": "librarian", "message": "where are my notes?"})
    ]
    answer = next(m["content"] for m in history if m["role"] == "tool")
    assert "where are my notes?" in answer  # the librarian's own (offline) reply
    assert resp.json()["text"]


def test_a_delegate_too_slow_for_the_callers_deadline_is_given_up_and_cancelled(
    make_cluster: Any, fake_llm: FakeLLM
) -> None:
    c: Cluster = make_cluster(REGINA_LIMITS__REQUEST_TIMEOUT="8")
    c.start_worker()
    web = c.start_web()

    def slow_helper(req: RecordedRequest) -> Reply:
        if "You are HELPER" in req.all_text and req.last_user_text == "take your time":
            return Reply(text="too late", delay=30)
        if "You are BOSS" in req.all_text and req.messages[-1]["role"] == "user" and req.last_user_text == "late":
            # A run busy past requestTimeout before it delegates (a stream may go on that long).
            return Reply(
                tool_calls=[ToolCall("delegate", {"agentType": "helper-agent", "message": "late one"})], delay=9
            )
        return script(req)

    fake_llm.default = slow_helper
    with httpx.Client(base_url=web.url, timeout=60) as slow_api:
        boss = spawn(slow_api, "boss-agent")
        t0 = time.monotonic()
        resp = slow_api.post(f"/instances/{boss}/chat", json={"message": "ask: take your time"})
        elapsed = time.monotonic() - t0
        assert resp.status_code == 200, resp.text
        text = resp.json()["text"]
        # The boss gave up within its own 8 s (less its margin to answer) and still answered.
        assert elapsed < 8, elapsed
        assert text.startswith("BOSS relays: ") and "did not answer" in text
        # The child's run was cancelled, not left waiting on the model: it answers the next chat.
        (child,) = {i["instanceId"] for i in slow_api.get("/agents/helper-agent/instances").json()}
        again = slow_api.post(f"/instances/{child}/chat", json={"message": "quick one"}, timeout=15)
        assert again.json()["text"] == "HELPER answers: quick one"

        # The wait is bounded from the delegation, not from the run's start: a run that delegates
        # after requestTimeout has passed still gets its delegate's answer.
        with slow_api.stream("POST", f"/instances/{boss}/chat/stream", json={"message": "late"}) as stream:
            events = [json.loads(line) for line in stream.iter_lines() if line.strip()]
        assert events[-1]["type"] == "finish", events[-1]
        assert events[-1]["text"] == "BOSS relays: HELPER answers: late one", events[-1]


def test_cancelling_the_callers_run_cancels_the_delegate_s_run(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """A cancel of the caller's run while its delegate is still working ends both: the caller's
    run at once, the child's run too (it would otherwise wait on its slow model call)."""

    def slow_helper(req: RecordedRequest) -> Reply:
        if "You are HELPER" in req.all_text and req.last_user_text == "think hard":
            return Reply(text="too late", delay=30)
        return script(req)

    fake_llm.default = slow_helper
    boss = spawn(api, "boss-agent")
    before = helpers(api)
    with api.stream("POST", f"/instances/{boss}/chat/stream", json={"message": "ask: think hard"}) as stream:
        run_id = stream.headers["X-Run-Id"]
        deadline = time.monotonic() + 20
        while not any(r.last_user_text == "think hard" and "You are HELPER" in r.all_text for r in fake_llm.requests):
            assert time.monotonic() < deadline, "the helper's model call never came"
            time.sleep(0.05)
        t0 = time.monotonic()
        assert api.post(f"/runs/{run_id}/cancel").json() == {"cancelled": True}
        events = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    assert time.monotonic() - t0 < 5
    assert events[-1]["type"] == "finish" and events[-1]["finishReason"] == "cancelled", events[-1]
    (child,) = helpers(api) - before
    # The child's run was cancelled too: it answers the next chat at once, not after 30 s.
    t1 = time.monotonic()
    again = api.post(f"/instances/{child}/chat", json={"message": "quick one"}, timeout=15)
    assert again.status_code == 200 and again.json()["text"] == "HELPER answers: quick one"
    assert time.monotonic() - t1 < 10


def test_a_caller_whose_worker_died_cancels_the_delegated_run_it_waited_for(
    make_cluster: Any, fake_llm: FakeLLM
) -> None:
    """The caller's step runs again elsewhere; its `delegate` call gets "outcome unknown" and is
    not made again, so nobody will read the delegated run's answer: that run is cancelled, not
    left spending tokens and holding the child (it answered after its 30 s model call)."""
    c: Cluster = make_cluster().start(workers=2)

    def slow_helper(req: RecordedRequest) -> Reply:
        if "You are HELPER" in req.all_text and req.last_user_text == "think for long":
            return Reply(text="too late", delay=30)
        return script(req)

    fake_llm.default = slow_helper
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        boss = spawn(api, "boss-agent")
        member = api.get(f"/instances/{boss}").json()["member"]
        victim = next(w for w in c.workers if w.member_id == member)
        with cf.ThreadPoolExecutor(1) as pool:
            chat = pool.submit(api.post, f"/instances/{boss}/chat", json={"message": "ask: think for long"})
            wait_until(
                lambda: any(
                    "You are HELPER" in r.all_text and r.last_user_text == "think for long" for r in fake_llm.requests
                ),
                timeout=20,
                what="the delegated run's model call",
            )
            (child,) = helpers(api)
            (listed,) = [
                i for i in api.get("/instances", params={"agent": "helper-agent"}).json() if i["instanceId"] == child
            ]
            child_run = listed["runningRun"]
            assert child_run
            victim.kill()
            resp = chat.result(90)
        assert resp.status_code == 200, resp.text
        assert "outcome unknown" in resp.json()["text"]
        status = wait_until(
            lambda: (s := api.get(f"/runs/{child_run}").json()["status"]) in ("cancelled", "finished", "failed") and s,
            timeout=20,
            what="the delegated run to end",
        )
        assert status == "cancelled"


def test_a_worker_shutting_down_does_not_wait_on_a_delegate_it_holds_that_cannot_start(
    make_cluster: Any, fake_llm: FakeLLM
) -> None:
    """A warm shutdown waits for the running steps, and a few seconds into it the worker takes no
    step any more: a caller that delegated then to a child held by the same worker waited on a run
    nobody would start, holding the shutdown until the delegation's deadline (or until the
    platform killed the worker, losing the caller's step). The caller now gets a tool error, answers,
    and the worker stops."""
    c: Cluster = make_cluster()
    worker = c.start_worker()
    web = c.start_web()

    def stopping_boss(req: RecordedRequest) -> Reply:
        if "You are BOSS" in req.all_text and req.messages[-1]["role"] == "user" and req.last_user_text == "ask: now":
            # Answered 8 s after the SIGTERM below: the worker's consumer has stopped by then
            # (Celery drains at most twice 2 s after a warm shutdown is asked).
            return Reply(tool_calls=[ToolCall("delegate", {"agentType": "helper-agent", "message": "now"})], delay=8)
        return script(req)

    fake_llm.default = stopping_boss
    with httpx.Client(base_url=web.url, timeout=90) as api:
        boss = spawn(api, "boss-agent")
        first = api.post(f"/instances/{boss}/chat", json={"message": "ask: warm up"}).json()
        assert first["text"] == "BOSS relays: HELPER answers: warm up"  # the child lives on this worker
        with cf.ThreadPoolExecutor(1) as pool:
            chat = pool.submit(api.post, f"/instances/{boss}/chat", json={"message": "ask: now"})
            wait_until(lambda: any(r.last_user_text == "ask: now" for r in fake_llm.requests), what="the boss's call")
            worker.popen.send_signal(signal.SIGTERM)  # while the boss's model call runs
            t0 = time.monotonic()
            resp = chat.result(40)
        assert resp.status_code == 200, resp.text
        text = resp.json()["text"]
        # The tool error (or, should the consumer still have taken the step on a slow machine,
        # the child's answer): either way an answer, not a wait until the deadline (60 s here).
        assert text.startswith("BOSS relays: ") and (
            "this worker is shutting down and holds the delegate" in text or text.endswith("HELPER answers: now")
        ), text
        assert worker.popen.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 30
