"""Runs as a product (SPEC §12): the run record, cancel from any web process, whenBusy, receipts.

Everything is real: two web processes and two workers of the shared cluster, the fake LLM over
HTTP. Every cancel test ends with a next chat whose model request is checked for orphan tool
calls (each assistant tool call has its result, no result without its call).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until

ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


@pytest.fixture(scope="module")
def web2(cluster: Cluster) -> Iterator[httpx.Client]:
    """A second web process: a cancel sent here must stop a run the first one started."""
    proc = cluster.start_web()
    with httpx.Client(base_url=proc.url, timeout=60) as client:
        yield client


def spawn(api: httpx.Client, agent: str = "openai-agent") -> str:
    resp = api.post(f"/agents/{agent}/instances")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["instanceId"])


class Stream:
    """A chat/stream request read in a thread: the run id from X-Run-Id, then every event."""

    def __init__(self, api: httpx.Client, iid: str, message: str, **body: Any) -> None:
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.run_id: queue.Queue[str] = queue.Queue()
        self.status = 0
        self._thread = threading.Thread(target=self._read, args=(api, iid, {"message": message, **body}), daemon=True)
        self._thread.start()

    def _read(self, api: httpx.Client, iid: str, body: dict[str, Any]) -> None:
        try:
            with api.stream("POST", f"/instances/{iid}/chat/stream", json=body) as resp:
                self.status = resp.status_code
                self.run_id.put(resp.headers.get("X-Run-Id", ""))
                for line in resp.iter_lines():
                    if line:
                        self.events.put(json.loads(line))
        finally:
            self.events.put(None)

    def id(self) -> str:
        return self.run_id.get(timeout=30)

    def until(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        """Read events until one of type `kind` (fails at the end of the stream)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            assert event is not None, f"stream ended before a {kind!r} event"
            if event["type"] == kind:
                return event


def assert_no_orphans(req: RecordedRequest) -> None:
    """Every assistant tool call has its result and every result has its call."""
    calls = [tc["id"] for m in req.messages if m["role"] == "assistant" for tc in m.get("tool_calls", [])]
    results = [m["tool_call_id"] for m in req.messages if m["role"] == "tool"]
    assert sorted(calls) == sorted(results), req.messages


def run_of(api: httpx.Client, run_id: str) -> dict[str, Any]:
    resp = api.get(f"/runs/{run_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_sync_chat_answers_run_id_and_finish_reason_and_the_run_record_shows_it(
    api: httpx.Client, fake_llm: FakeLLM
) -> None:
    iid = spawn(api)
    resp = api.post(f"/instances/{iid}/chat", json={"message": "record me"})
    body = resp.json()
    assert body["text"] == "echo: record me" and body["finishReason"] == "stop"
    assert body["runId"] == resp.headers["X-Run-Id"]
    run = run_of(api, body["runId"])
    assert run["runId"] == body["runId"] and run["instanceId"] == iid and run["status"] == "finished"
    for name in ("createdAt", "startedAt", "finishedAt"):
        assert run[name] is not None and __import__("re").match(ISO, run[name]), run
    assert run["createdAt"] <= run["startedAt"] <= run["finishedAt"]
    assert run["usage"] == body["usage"] and body["usage"]["promptTokens"] > 0
    assert api.get("/runs/run-000000000000000000000000").status_code == 404
    shown = api.get(f"/instances/{iid}").json()
    assert shown["usage"] == body["usage"]  # the instance's usage so far


def test_a_failed_run_says_so(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(error_status=500, error_message="provider down"))
    body = api.post(f"/instances/{iid}/chat", json={"message": "fail"}).json()
    assert body["finishReason"] == "error" and body["text"].startswith("Error:")
    run = run_of(api, body["runId"])
    assert run["status"] == "failed" and "provider down" in run["error"]


def test_cancel_while_waiting_on_the_model_from_the_other_web_process(
    api: httpx.Client, web2: httpx.Client, fake_llm: FakeLLM
) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="too late", delay=30))
    stream = Stream(api, iid, "wait for it")
    run_id = stream.id()
    fake_llm.wait_for_requests(1, timeout=20)
    started = time.monotonic()
    resp = web2.post(f"/runs/{run_id}/cancel")
    assert (resp.status_code, resp.json()) == (202, {"cancelled": True})
    final = stream.until("finish", timeout=15)
    assert time.monotonic() - started < 10  # at once, not after the model's 30 s
    assert final["finishReason"] == "cancelled"
    # Cut short before its first token: whether the provider billed it is not known, nothing counts.
    assert final["usage"] == {"promptTokens": 0, "completionTokens": 0}
    assert run_of(web2, run_id)["status"] == "cancelled"
    assert web2.post(f"/runs/{run_id}/cancel").json() == {"cancelled": False, "status": "cancelled"}
    fake_llm.reset()
    assert api.post(f"/instances/{iid}/chat", json={"message": "next"}).json()["text"] == "echo: next"
    (req,) = fake_llm.requests
    assert_no_orphans(req)
    assert "too late" not in req.all_text


def test_a_model_call_cancelled_mid_answer_counts_its_estimate(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """The provider bills a call cut short after it began answering but never says how much:
    the cancelled run counts compaction's estimate (characters / 4) of its request and of what it
    had answered, in its finish, its record and the instance's usage (the token budgets)."""
    iid = spawn(api)
    fake_llm.push(Reply(text="one two three four five six seven eight nine ten", chunk_delay=0.5))
    stream = Stream(api, iid, "count " * 200)
    run_id = stream.id()
    stream.until("text-delta")
    assert api.post(f"/runs/{run_id}/cancel").status_code == 202
    final = stream.until("finish", timeout=15)
    assert final["finishReason"] == "cancelled"
    assert final["usage"]["promptTokens"] >= len("count " * 200) // 4 and final["usage"]["completionTokens"] >= 1
    assert run_of(api, run_id)["usage"] == final["usage"]
    assert api.get(f"/instances/{iid}").json()["usage"] == final["usage"]

def test_cancel_during_a_tool_records_a_cancelled_result(
    api: httpx.Client, web2: httpx.Client, fake_llm: FakeLLM
) -> None:
    iid = spawn(api)
    fake_llm.push(
        Reply(tool_calls=[ToolCall("bash", {"command": "sleep 8"}), ToolCall("bash", {"command": "echo never"})]),
        Reply(text="must not be asked"),
    )
    stream = Stream(api, iid, "run the slow tool")
    run_id = stream.id()
    stream.until("tool-call")
    started = time.monotonic()
    assert web2.post(f"/runs/{run_id}/cancel").status_code == 202
    results = [stream.until("tool-result", timeout=15), stream.until("tool-result", timeout=15)]
    final = stream.until("finish", timeout=15)
    assert time.monotonic() - started < 6  # the 8 s sleep was cut short
    assert final["finishReason"] == "cancelled"
    assert all("cancelled" in json.dumps(r["result"]) for r in results)
    assert len(fake_llm.requests) == 1  # no model call after the cancel
    fake_llm.reset()
    assert api.post(f"/instances/{iid}/chat", json={"message": "after"}).json()["text"] == "echo: after"
    (req,) = fake_llm.requests
    assert_no_orphans(req)
    assert sum(1 for m in req.messages if m["role"] == "tool") == 2


def test_cancel_a_queued_run(api: httpx.Client, web2: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="first done", delay=3))
    first = Stream(api, iid, "first")
    first_id = first.id()
    fake_llm.wait_for_requests(1, timeout=20)
    second = Stream(api, iid, "queued one")
    second_id = second.id()
    assert run_of(api, second_id)["status"] == "queued"
    assert web2.post(f"/runs/{second_id}/cancel").json() == {"cancelled": True}
    assert second.until("finish", timeout=10)["finishReason"] == "cancelled"
    assert first.until("finish", timeout=30)["text"] == "first done"
    assert run_of(api, first_id)["status"] == "finished"
    assert run_of(api, second_id)["status"] == "cancelled"
    assert [r.last_user_text for r in fake_llm.requests] == ["first"]  # the queued run never ran
    assert api.post(f"/instances/{iid}/chat", json={"message": "third"}).json()["text"] == "echo: third"
    assert_no_orphans(fake_llm.requests[-1])


def test_when_busy_reject_steer_and_queue(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    fake_llm.push(Reply(text="long answer", delay=2))
    running = Stream(api, iid, "long one")
    run_id = running.id()
    fake_llm.wait_for_requests(1, timeout=20)

    rejected = api.post(f"/instances/{iid}/chat", json={"message": "no", "whenBusy": "reject"})
    assert rejected.status_code == 409 and run_id in rejected.json()["error"]
    bad = api.post(f"/instances/{iid}/chat", json={"message": "x", "whenBusy": "sometimes"})
    assert bad.status_code == 400 and "whenBusy" in bad.json()["error"]

    steered = api.post(f"/instances/{iid}/chat", json={"message": "also this", "whenBusy": "steer"})
    assert steered.status_code == 200 and steered.json()["runId"] == run_id == steered.headers["X-Run-Id"]
    applied = running.until("steer-applied")
    assert applied["message"] == "also this"
    assert running.until("finish")["text"] == steered.json()["text"] == "echo: also this"

    queued = api.post(f"/instances/{iid}/chat", json={"message": "afterwards", "whenBusy": "queue"}).json()
    assert queued["runId"] != run_id and queued["text"] == "echo: afterwards"
    assert [r.last_user_text for r in fake_llm.requests] == ["long one", "also this", "afterwards"]


def test_steer_receipt_and_idempotent_steer(api: httpx.Client) -> None:
    iid = spawn(api)
    headers = {"Idempotency-Key": "steer-1"}
    first = api.post(f"/instances/{iid}/steer", json={"message": "later"}, headers=headers).json()
    again = api.post(f"/instances/{iid}/steer", json={"message": "later"}, headers=headers).json()
    assert first["queued"] is True and first["steerId"] == again["steerId"]
    other = api.post(f"/instances/{iid}/steer", json={"message": "else"}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "go"}) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert [(e["steerId"], e["message"]) for e in events if e["type"] == "steer-applied"] == [
        (first["steerId"], "later")
    ]


def test_idempotent_spawn(api: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"spawn-{time.monotonic_ns()}"}
    first = api.post("/agents/openai-agent/instances", headers=headers)
    again = api.post("/agents/openai-agent/instances", headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = api.post("/agents/openai-agent/instances", headers=headers, json={"different": True})
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]
    # scoped per route and definition: the same key spawns anew for another agent
    elsewhere = api.post("/agents/anthropic-agent/instances", headers=headers)
    assert elsewhere.status_code == 201 and elsewhere.json()["instanceId"] != first.json()["instanceId"]


def test_an_idempotency_key_in_utf8_counts_its_characters(api: httpx.Client) -> None:
    """Headers reach the app as latin-1: 255 'é' were 510 characters, over the 255 limit."""
    key = f"clé-{time.monotonic_ns()}-".encode() + "é".encode() * 200
    first = api.post("/agents/openai-agent/instances", headers={"Idempotency-Key": key})
    again = api.post("/agents/openai-agent/instances", headers={"Idempotency-Key": key})
    assert first.status_code == again.status_code == 201, first.text
    assert first.json() == again.json()
    too_long = api.post("/agents/openai-agent/instances", headers={"Idempotency-Key": "é".encode() * 256})
    assert too_long.status_code == 400 and "1 to 255 characters" in too_long.json()["error"]


def test_idempotent_chat_does_the_work_once_also_when_two_race(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    headers = {"Idempotency-Key": "chat-key-1"}
    fake_llm.push(Reply(text="only once", delay=1))
    with_key = {"message": "do it once"}
    results: list[httpx.Response] = []

    def post() -> None:
        results.append(api.post(f"/instances/{iid}/chat", json=with_key, headers=headers))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [200, 200]
    assert results[0].json() == results[1].json() and results[0].json()["text"] == "only once"
    again = api.post(f"/instances/{iid}/chat", json=with_key, headers=headers).json()
    assert again == results[0].json()
    assert len(fake_llm.requests) == 1  # the model was called once for three requests
    other = api.post(f"/instances/{iid}/chat", json={"message": "another"}, headers=headers)
    assert other.status_code == 422
    # scoped per route: chat/stream with the same key is a new run, replayed on retry
    streamed = []
    for _ in range(2):
        with api.stream("POST", f"/instances/{iid}/chat/stream", json=with_key, headers=headers) as resp:
            streamed.append([json.loads(line) for line in resp.iter_lines() if line])
    assert streamed[0] == streamed[1] and streamed[0][-1]["type"] == "finish"
    assert len(fake_llm.requests) == 2


def test_deleting_an_instance_ends_its_running_and_queued_runs_cancelled(
    api: httpx.Client, fake_llm: FakeLLM, cluster: Cluster
) -> None:
    iid = spawn(api)
    fake_llm.push_for("slow one", Reply(text="never heard", delay=5))
    r = redis.Redis.from_url(cluster.redis_url)
    results: queue.Queue[httpx.Response] = queue.Queue()

    def chat(message: str) -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=60) as own:
            results.put(own.post(f"/instances/{iid}/chat", json={"message": message}))

    threading.Thread(target=chat, args=("slow one",), daemon=True).start()
    wait_until(lambda: any(q.last_user_text == "slow one" for q in fake_llm.requests), 10)
    threading.Thread(target=chat, args=("behind it",), daemon=True).start()
    wait_until(lambda: r.zcard(f"regina:inst:{iid}:runs") == 2, 10, what="the second run queued")

    assert api.delete(f"/instances/{iid}").status_code == 204

    answers = [results.get(timeout=20), results.get(timeout=20)]
    for answer in answers:
        assert answer.status_code == 200 and answer.json()["finishReason"] == "cancelled", answer.text
        run_id = answer.headers["X-Run-Id"]
        assert api.get(f"/runs/{run_id}").json()["status"] == "cancelled"
        assert json.loads(api.get(f"/runs/{run_id}/events").text.splitlines()[-1])["finishReason"] == "cancelled"
