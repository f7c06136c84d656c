"""NDJSON streaming, steering and re-attaching to runs, over real HTTP (SPEC §4, issue 4)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from typing import Any

import httpx
import pytest
from dirty_equals import IsStr

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def stream(api: httpx.Client, iid: str, message: str) -> list[tuple[float, dict[str, Any]]]:
    """POST …/chat/stream and return (arrival time, event) for every line."""
    out = []
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": message}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            if line:
                out.append((time.monotonic(), json.loads(line)))
    return out


def types(events: list[tuple[float, dict[str, Any]]]) -> list[str]:
    return [e["type"] for _, e in events]


def test_first_delta_arrives_before_the_model_finishes(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="one two three four five six", chunk_delay=0.15))
    events = stream(api, iid, "count slowly")
    deltas = [(t, e) for t, e in events if e["type"] == "text-delta"]
    finish_time, finish = events[-1]
    assert finish["type"] == "finish"
    # Six chunks 0.15 s apart: the first delta must reach us well before the last one is produced.
    assert finish_time - deltas[0][0] > 0.5
    assert "".join(e["textDelta"] for _, e in deltas) == finish["text"] == "one two three four five six"
    assert [e["seq"] for _, e in events] == list(range(1, len(events) + 1))


def test_a_tool_run_streams_call_result_step_text_finish(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/notes/a.txt", "content": "hello"})]),
        Reply(text="saved it"),
    )
    events = [e for _, e in stream(api, iid, "save hello")]
    collapsed = [
        t
        for i, t in enumerate(types([(0, e) for e in events]))
        if i == 0 or t != "text-delta" or events[i - 1]["type"] != t
    ]
    assert collapsed == ["tool-call", "tool-result", "step-finish", "text-delta", "step-finish", "finish"]
    call, result = events[0], events[1]
    assert call == {
        "type": "tool-call",
        "toolCallId": IsStr(),
        "toolName": "write_file",
        "args": {"path": "/notes/a.txt", "content": "hello"},
        "seq": 1,
        "runId": IsStr(),
    }
    assert result["toolCallId"] == call["toolCallId"] and result["toolName"] == "write_file"
    assert events[2]["finishReason"] == "tool-calls"
    usages = [r.usage for r in fake_llm.requests]
    assert events[-1]["usage"] == {
        "promptTokens": sum(u[0] for u in usages),
        "completionTokens": sum(u[1] for u in usages),
    }
    assert events[-1]["text"] == "saved it"


def test_a_failing_model_gives_an_error_event_and_an_error_message(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(error_status=500, error_message="the model is on fire"))
    events = [e for _, e in stream(api, iid, "hello?")]
    assert events[-1]["type"] == "error"
    assert "on fire" in events[-1]["error"]
    history = api.get(f"/instances/{iid}/messages").json()
    assert history[-1]["role"] == "assistant"
    assert history[-1]["content"].startswith("Error: ") and "on fire" in history[-1]["content"]
    # The sync endpoint reports the same as text, with status 200.
    fake_llm.push(Reply(error_status=500, error_message="still burning"))
    resp = api.post(f"/instances/{iid}/chat", json={"message": "again?"})
    assert resp.status_code == 200 and resp.json()["text"].startswith("Error: ")


def test_a_steer_during_a_run_reaches_the_model_on_the_next_step(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/x", "content": "1"})], delay=1.0),
        Reply(text="adjusted"),
    )
    with cf.ThreadPoolExecutor(1) as pool:
        run = pool.submit(stream, api, iid, "start working")
        fake_llm.wait_for_requests(1, timeout=10)  # the loop now waits on the model's first step
        receipt = api.post(f"/instances/{iid}/steer", json={"message": "focus on X"}).json()
        assert receipt["queued"] is True and receipt["steerId"].startswith("steer-")
        events = run.result(timeout=30)
    assert types(events)[-1] == "finish"
    applied = [e for _, e in events if e["type"] == "steer-applied"]
    assert [(e["steerId"], e["message"]) for e in applied] == [(receipt["steerId"], "focus on X")]
    second = fake_llm.requests[1]
    assert second.messages[-1] == {"role": "user", "content": "focus on X"}
    history = [(m["role"], m.get("content")) for m in api.get(f"/instances/{iid}/messages").json()]
    assert ("user", "focus on X") in history
    assert history.index(("user", "focus on X")) < history.index(("assistant", "adjusted"))


@pytest.mark.parametrize("streamed", [True, False])
def test_a_steer_during_the_final_answer_continues_the_run(
    api: httpx.Client, fake_llm: FakeLLM, streamed: bool
) -> None:
    """The worker checks for steering and publishes the finish in one step: a steer that lands
    while the model writes its last answer still gets a next step, and no event is lost."""
    iid = spawn(api)
    fake_llm.push(Reply(text="first answer", delay=1.0), Reply(text="second answer"))
    with cf.ThreadPoolExecutor(1) as pool:
        if streamed:
            run = pool.submit(lambda: [e for _, e in stream(api, iid, "go")])
        else:
            run = pool.submit(lambda: api.post(f"/instances/{iid}/chat", json={"message": "go"}))
        fake_llm.wait_for_requests(1, timeout=10)
        assert api.post(f"/instances/{iid}/steer", json={"message": "one more thing"}).status_code == 200
        result = run.result(timeout=30)
    if streamed:
        events = result
        run_id = events[0]["runId"]
    else:
        assert result.json()["text"] == "second answer"
        run_id = result.headers["X-Run-Id"]
        events = [json.loads(line) for line in api.get(f"/runs/{run_id}/events").text.splitlines() if line]
    assert [e["type"] for e in events if e["type"] != "text-delta"] == [
        "step-finish",
        "steer-applied",
        "step-finish",
        "finish",
    ]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["text"] == "second answer"
    assert fake_llm.requests[-1].messages[-1] == {"role": "user", "content": "one more thing"}
    history = [(m["role"], m.get("content")) for m in api.get(f"/instances/{iid}/messages").json()]
    assert history[-4:] == [
        ("user", "go"),
        ("assistant", "first answer"),
        ("user", "one more thing"),
        ("assistant", "second answer"),
    ]


def test_a_steer_while_idle_is_taken_by_the_next_run(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    api.post(f"/instances/{iid}/steer", json={"message": "remember: be brief"})
    api.post(f"/instances/{iid}/chat", json={"message": "hello"})
    sent = [m["content"] for m in fake_llm.requests[-1].messages if m["role"] == "user"]
    assert sent == ["remember: be brief", "hello"]


def test_a_client_that_drops_can_reattach_and_get_every_remaining_event(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    words = " ".join(f"w{i}" for i in range(12))
    fake_llm.push(Reply(text=words, chunk_delay=0.1))
    seen: list[dict[str, Any]] = []
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "talk"}) as resp:
        run_id = resp.headers["X-Run-Id"]
        for line in resp.iter_lines():
            seen.append(json.loads(line))
            if len(seen) == 3:
                break  # drop the connection mid-run
    rest = []
    with api.stream("GET", f"/runs/{run_id}/events", params={"after": seen[-1]["seq"]}) as resp:
        for line in resp.iter_lines():
            if line:
                rest.append(json.loads(line))
    events = seen + rest
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "finish"
    assert "".join(e.get("textDelta", "") for e in events) == words
    history = api.get(f"/instances/{iid}/messages").json()
    assert history[-1] == {"role": "assistant", "content": words, "runId": run_id}


def test_reattaching_to_a_finished_run_replays_it(api: httpx.Client) -> None:
    iid = spawn(api)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "replay me"})
    run_id = resp.headers["X-Run-Id"]
    lines = [json.loads(x) for x in api.get(f"/runs/{run_id}/events").text.splitlines()]
    assert lines[-1]["type"] == "finish" and lines[-1]["text"] == "echo: replay me"
    assert api.get("/runs/run-000000000000000000000000/events").status_code == 404
    assert api.get(f"/runs/{run_id}/events", params={"after": "x"}).status_code == 400


def test_streams_on_one_instance_run_in_order_and_on_two_instances_interleave(
    api: httpx.Client, fake_llm: FakeLLM
) -> None:
    a, b = spawn(api), spawn(api)
    for marker in ("a-first", "a-second", "b-only"):
        fake_llm.push_for(marker, Reply(text=f"{marker} x y z", chunk_delay=0.15))
    with cf.ThreadPoolExecutor(3) as pool:
        first = pool.submit(stream, api, a, "a-first")
        wait_until(lambda: len(fake_llm.requests) >= 1, timeout=10)
        second = pool.submit(stream, api, a, "a-second")
        other = pool.submit(stream, api, b, "b-only")
        ev1, ev2, ev3 = first.result(30), second.result(30), other.result(30)
    # One instance: the second run starts only after the first finished (the run records' times,
    # from one clock: the two clients' receive times may cross by a fraction of a millisecond).
    run1 = api.get(f"/runs/{ev1[-1][1]['runId']}").json()
    run2 = api.get(f"/runs/{ev2[-1][1]['runId']}").json()
    assert run2["startedAt"] >= run1["finishedAt"], (run1, run2)
    # Two instances: b's run overlaps a's first run.
    assert ev3[0][0] < ev1[-1][0]
    assert ev1[-1][1]["text"] == "a-first x y z" and ev2[-1][1]["text"] == "a-second x y z"
