"""The agent loop against a real fake-LLM HTTP server, in OpenAI and Anthropic wire formats.

Everything below the model is real: LiteLLM, the HTTP server, the VFS, the file tools, the
session JSONL. Each test scripts the model, runs one turn and checks the events, the requests the
model received, and what was persisted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from regina.config import Compaction
from regina.errors import ToolError
from regina.providers import ModelTarget
from regina.runtime.compaction import SUMMARY_PREFIX
from regina.runtime.events import Event, Usage, event_to_dict
from regina.runtime.loop import TurnResult, TurnSpec, run_turn
from regina.runtime.messages import OUTCOME_UNKNOWN, assistant, tool_call, user
from regina.runtime.session import Session
from regina.runtime.sink import Budget, LocalSink, RunProgress, Steer
from regina.runtime.tools.base import Tool
from regina.runtime.tools.files import file_tools
from regina.vfs import MemoryVFS, SQLiteVFS
from regina.vfs.base import VFS
from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall

SYSTEM = "You are a test agent."


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture(params=["openai", "anthropic"])
def target(request: pytest.FixtureRequest, fake: FakeLLM) -> ModelTarget:
    fake.reset()
    if request.param == "openai":
        return ModelTarget("openai", "openai/gpt-4o", "sk-test", fake.url + "/v1")
    return ModelTarget("anthropic", "anthropic/claude-sonnet-4-5", "sk-ant-test", fake.url)


@pytest.fixture(params=["memory", "sqlite"])
def vfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VFS]:
    v: VFS = MemoryVFS() if request.param == "memory" else SQLiteVFS(str(tmp_path / "vfs.sqlite"))
    yield v
    v.close()


class Turn:
    """Runs turns and records their events."""

    def __init__(self, target: ModelTarget, vfs: VFS, tools: dict[str, Tool] | None = None) -> None:
        self.target = target
        self.vfs = vfs
        self.session = Session(vfs)
        self.tools = file_tools(vfs) if tools is None else tools
        self.events: list[dict[str, Any]] = []
        self.steer: list[list[str]] = []  # one list per drain call, consumed in order
        self.heartbeats = 0

    def drain(self) -> list[Steer]:
        return [Steer("", m) for m in self.steer.pop(0)] if self.steer else []

    def beat(self) -> None:
        self.heartbeats += 1

    def emit(self, ev: Event) -> None:
        self.events.append(event_to_dict(ev))

    def run(self, message: str | None, run_id: str | None = None, **kw: Any) -> TurnResult:
        sink = LocalSink(self.emit, run_id=run_id, heartbeat=self.beat)
        sink.drain_steering = self.drain  # type: ignore[method-assign]
        return run_turn(TurnSpec(self.target, SYSTEM, self.tools, **kw), self.session, message, sink)

    def types(self) -> list[str]:
        out: list[str] = []
        for e in self.events:
            if e["type"] == "text-delta" and out and out[-1] == "text-delta":
                continue
            out.append(e["type"])
        return out

    def persisted(self) -> list[dict[str, Any]]:
        """The session as a fresh process would load it."""
        return Session(self.vfs).load()


def _usage(reqs: list[RecordedRequest]) -> dict[str, int]:
    return {"promptTokens": sum(r.usage[0] for r in reqs), "completionTokens": sum(r.usage[1] for r in reqs)}


def test_text_answer_streams_deltas_and_reports_the_servers_usage(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(Reply(text="Hello there, this is a streamed answer."))
    t = Turn(target, MemoryVFS())
    result = t.run("hi", run_id="run-1")

    deltas = [e["textDelta"] for e in t.events if e["type"] == "text-delta"]
    assert len(deltas) > 3
    assert "".join(deltas) == result.text == "Hello there, this is a streamed answer."
    assert t.types() == ["text-delta", "step-finish", "finish"]
    assert result.error is None and result.finish_reason == "stop" and result.steps == 1
    (req,) = fake.requests
    assert req.stream
    assert [(m["role"], m["content"]) for m in req.messages] == [("system", SYSTEM), ("user", "hi")]
    assert t.events[-1] == {"type": "finish", "finishReason": "stop", "text": result.text, "usage": _usage([req])}
    assert result.usage == Usage(prompt_tokens=req.usage[0], completion_tokens=req.usage[1])
    assert t.persisted() == [
        {"role": "user", "content": "hi", "runId": "run-1"},
        {"role": "assistant", "content": result.text, "runId": "run-1"},
    ]
    assert t.heartbeats == 1


def test_multi_step_tool_run(fake: FakeLLM, target: ModelTarget, vfs: VFS) -> None:
    fake.push(
        Reply(text="Writing it.", tool_calls=[ToolCall("write_file", {"path": "/notes/a.txt", "content": "hi!"})]),
        Reply(tool_calls=[ToolCall("read_file", {"path": "/notes/a.txt"})]),
        Reply(text="The file says hi!"),
    )
    t = Turn(target, vfs)
    result = t.run("write then read", run_id="r2")

    assert t.types() == [
        "text-delta", "tool-call", "tool-result", "step-finish",
        "tool-call", "tool-result", "step-finish",
        "text-delta", "step-finish", "finish",
    ]  # fmt: skip
    calls = [e for e in t.events if e["type"] == "tool-call"]
    results = [e for e in t.events if e["type"] == "tool-result"]
    ids = [fake.requests[0].reply.tool_calls[0].id, fake.requests[1].reply.tool_calls[0].id]
    assert [c["toolCallId"] for c in calls] == [r["toolCallId"] for r in results] == ids
    assert calls[0]["args"] == {"path": "/notes/a.txt", "content": "hi!"}
    assert results[1] == {"type": "tool-result", "toolCallId": ids[1], "toolName": "read_file", "result": "hi!"}
    steps = [e for e in t.events if e["type"] == "step-finish"]
    assert [s["finishReason"] for s in steps] == ["tool-calls", "tool-calls", "stop"]
    assert [s["usage"] for s in steps] == [_usage([r]) for r in fake.requests]
    assert t.events[-1]["usage"] == _usage(fake.requests)
    assert result.text == "The file says hi!" and result.steps == 3 and t.heartbeats == 3
    assert vfs.read("/notes/a.txt") == b"hi!"

    # The model saw the tool results, paired with its calls.
    second = fake.requests[1].messages
    assert second[-2]["tool_calls"][0]["id"] == ids[0]
    assert second[-1] == {"role": "tool", "content": results[0]["result"], "tool_call_id": ids[0]}
    assert fake.requests[2].messages[-1]["content"] == "hi!"

    saved = t.persisted()
    assert [(m["role"], m.get("tool_call_id")) for m in saved] == [
        ("user", None), ("assistant", None), ("tool", ids[0]), ("assistant", None), ("tool", ids[1]),
        ("assistant", None),
    ]  # fmt: skip
    assert saved[1]["content"] == "Writing it."
    assert saved[1]["tool_calls"][0]["id"] == ids[0]
    assert json.loads(saved[1]["tool_calls"][0]["function"]["arguments"]) == calls[0]["args"]
    assert saved[4]["content"] == "hi!"
    assert all(m["runId"] == "r2" for m in saved)
    assert saved == t.session.messages


def test_steering_drained_at_a_step_boundary_reaches_the_next_request(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/x", "content": "1"})]),
        Reply(text="Done, and I also noted the steer."),
    )
    t = Turn(target, MemoryVFS())
    t.steer = [["queued while idle"], ["also use French"]]  # start of run, then after step 1
    t.run("do it")

    first, second = fake.requests
    # Anthropic gets consecutive user messages merged into one (LiteLLM keeps roles alternating).
    assert "".join(m["content"] for m in first.messages if m["role"] == "user") == "queued while idledo it"
    assert "also use French" not in first.all_text
    assert second.messages[-1] == {"role": "user", "content": "also use French"}
    assert second.messages[-2]["role"] == "tool"
    saved = t.persisted()
    assert [(m["role"], m["content"]) for m in saved if m["role"] == "user"] == [
        ("user", "queued while idle"),
        ("user", "do it"),
        ("user", "also use French"),
    ]
    assert saved[-2] == {"role": "user", "content": "also use French"}


def test_steering_after_a_final_answer_continues_the_loop(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(Reply(text="First answer."), Reply(text="Second answer."))
    t = Turn(target, MemoryVFS())
    t.steer = [[], ["wait, one more thing"]]
    result = t.run("q")
    assert len(fake.requests) == 2
    assert fake.requests[1].messages[-1] == {"role": "user", "content": "wait, one more thing"}
    assert fake.requests[1].messages[-2] == {"role": "assistant", "content": "First answer."}
    assert result.text == "Second answer."
    assert t.types() == ["text-delta", "step-finish", "text-delta", "step-finish", "finish"]


def test_model_error_is_an_event_and_a_saved_message(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(Reply(error_status=500, error_message="upstream exploded"))
    t = Turn(target, MemoryVFS())
    result = t.run("hi")

    assert result.error == "model provider error: 500 upstream exploded"
    assert result.text == f"Error: {result.error}"
    assert t.events == [{"type": "error", "error": result.error, "usage": {"promptTokens": 0, "completionTokens": 0}}]
    assert t.persisted()[-1] == {"role": "assistant", "content": result.text}

    fake.push(Reply(text="recovered"))  # the history stays valid for the next turn
    assert t.run("again").text == "recovered"
    assert [m["content"] for m in fake.requests[-1].messages[1:]] == ["hi", result.text, "again"]


def test_model_error_mid_run_keeps_the_transcript_valid(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/a", "content": "x"})]),
        Reply(error_status=529 if target.provider == "anthropic" else 503, error_message="overloaded"),
        Reply(text="fine now"),
    )
    t = Turn(target, MemoryVFS())
    result = t.run("go")
    assert result.error is not None and "overloaded" in result.error
    assert t.types() == ["tool-call", "tool-result", "step-finish", "error"]
    assert [m["role"] for m in t.persisted()] == ["user", "assistant", "tool", "assistant"]
    assert t.run("retry").text == "fine now"


def test_compaction_sends_summary_plus_last_n(fake: FakeLLM, target: ModelTarget) -> None:
    vfs = MemoryVFS()
    session = Session(vfs)
    old = [user(f"old question {i} " + "x" * 200) if i % 2 == 0 else assistant(f"old answer {i}") for i in range(8)]
    session.append(*old)
    fake.push(Reply(text="SUMMARY-XYZ they asked 4 questions"), Reply(text="fresh answer"))
    t = Turn(target, vfs)
    t.session = session
    result = t.run("new question", compaction=Compaction(threshold=50, keep_last_n=2))

    summary_req, answer_req = fake.requests
    assert not summary_req.tool_names and "old question 0" in summary_req.all_text
    assert "old question 6" in summary_req.all_text and "old answer 7" not in summary_req.all_text
    assert [(m["role"], m["content"]) for m in answer_req.messages] == [
        ("system", SYSTEM),
        ("user", SUMMARY_PREFIX + "SUMMARY-XYZ they asked 4 questions"),
        ("assistant", "old answer 7"),
        ("user", "new question"),
    ]
    saved = t.persisted()
    assert [m["content"] for m in saved] == [
        SUMMARY_PREFIX + "SUMMARY-XYZ they asked 4 questions",
        "old answer 7",
        "new question",
        "fresh answer",
    ]
    assert result.usage == Usage(
        prompt_tokens=summary_req.usage[0] + answer_req.usage[0],
        completion_tokens=summary_req.usage[1] + answer_req.usage[1],
    )


def test_a_summary_that_spends_the_token_budget_stops_the_run_before_its_model_call(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """Compaction's summary is a model call: its tokens count against maxTokensPerRun before
    the step's own call (the check came before the summary, so the run went past its budget)."""
    session = Session(MemoryVFS())
    session.append(*[user("old question " + "x" * 400), assistant("old answer")] * 2)
    # (a budget that pays for the summary's prompt, about 300 tokens, which the provider then
    # counts higher than the estimate)
    fake.push(Reply(text="SUMMARY", usage=(1990, 20)), Reply(text="not asked"))
    t = Turn(target, session.vfs)
    t.session = session
    sink = LocalSink(t.emit, run_id="r-c", budget=Budget(max_tokens_per_run=2000))
    spec = TurnSpec(target, SYSTEM, t.tools, compaction=Compaction(threshold=50, keep_last_n=2))
    result = run_turn(spec, session, "new question", sink)
    assert len(fake.requests) == 1, [r.all_text[:80] for r in fake.requests]  # the summary only
    assert result.finish_reason == "budget" and "2010 of 2000" in result.text, result
    assert result.usage == Usage(prompt_tokens=1990, completion_tokens=20)


def test_a_summary_is_capped_by_the_token_budget_and_one_it_cannot_pay_for_is_not_asked(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """A summary's answer had no max_tokens: a long one spent past the budget. It is capped to
    what the budget leaves after its prompt; with nothing left for it, it is not asked for and
    the conversation stays whole (the step's own check then ends the run)."""
    session = Session(MemoryVFS())
    session.append(*[user("old question " + "x" * 400), assistant("old answer")] * 2)
    fake.push(Reply(text="SUMMARY", usage=(300, 5)), Reply(text="the answer", usage=(10, 2)))
    t = Turn(target, session.vfs)
    t.session = session
    budget = 3000 + _schema_tokens(t.tools)
    spec = TurnSpec(target, SYSTEM, t.tools, compaction=Compaction(threshold=50, keep_last_n=2))
    result = run_turn(spec, session, "new question", LocalSink(t.emit, run_id="r-d", budget=Budget(budget)))
    summary, answer = fake.requests
    cap = summary.body.get("max_tokens") or summary.body.get("max_completion_tokens")
    assert cap is not None and budget - 600 < cap < budget, summary.body  # what is left after its prompt
    assert result.finish_reason == "stop" and result.text == "the answer"
    assert str(session.messages[0]["content"]).startswith(SUMMARY_PREFIX)

    # Given a budget below the summary's prompt
    fake.reset()
    session = Session(MemoryVFS())
    session.append(*[user("old question " + "x" * 400), assistant("old answer")] * 2)
    before = list(session.messages)
    result = run_turn(spec, session, "new question", LocalSink(t.emit, run_id="r-e", budget=Budget(100)))
    assert fake.requests == [] and result.finish_reason == "budget", result
    assert session.messages[: len(before)] == before


def _prompt_estimate(*texts: str, tools: dict[str, Tool] | None = None) -> int:
    """The loop's estimate of a request's prompt: characters / 4, the tool schemas included."""
    return (sum(len(t) for t in texts) + sum(t.schema_chars() for t in (tools or {}).values())) // 4


def _schema_tokens(tools: dict[str, Tool]) -> int:
    """The tool schemas' share of every prompt's estimate: a test's budget leaves them room."""
    return _prompt_estimate(tools=tools)


def test_a_one_step_answer_past_the_token_budget_is_capped_and_ends_the_run_budget(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """Regression: the token budget was checked only before each model call, so a run's only (or
    last) step could spend any amount and the run still ended "stop". The call's max_tokens is
    now what the budget leaves after the prompt's estimate, and a step that reaches the budget
    ends the run "budget" with its answer saved."""
    # Given maxTokensPerRun 60 (plus the tool schemas' share) and a model that would answer 500
    # tokens to a prompt as estimated, the tool schemas included (providers count them)
    t = Turn(target, MemoryVFS())
    budget = 60 + _schema_tokens(t.tools)
    prompt = _prompt_estimate(SYSTEM, "tell me all", tools=t.tools)
    fake.push(Reply(text="word " * 400, usage=(prompt, 500)))
    sink = LocalSink(t.emit, run_id="r-b", budget=Budget(max_tokens_per_run=budget))
    result = run_turn(TurnSpec(target, SYSTEM, t.tools), t.session, "tell me all", sink)

    # Then the call was capped to what the budget left after the prompt
    (req,) = fake.requests
    cap = budget - prompt
    assert 0 < cap < 60
    assert req.body["max_tokens"] == cap
    # ... the answer was cut there, saved whole as the model gave it, and the run ended "budget"
    answer = "word " * 400
    answer = answer[: len(answer) * cap // 500]
    assert result.finish_reason == "budget" and result.usage == Usage(prompt_tokens=prompt, completion_tokens=cap)
    assert result.text.startswith(answer) and "maxTokensPerRun" in result.text and f"cut at {cap}" in result.text
    assert [e["finishReason"] for e in t.events if e["type"] in ("step-finish", "finish")] == ["length", "budget"]
    assert t.persisted()[-1] == {"role": "assistant", "content": answer, "runId": "r-b"}


def test_a_step_that_goes_past_the_token_budget_ends_the_run_budget(fake: FakeLLM, target: ModelTarget) -> None:
    """A prompt larger than its estimate can take a step past the budget although the answer
    fitted its cap: the run ends "budget" all the same, naming what it used."""
    t = Turn(target, MemoryVFS())
    schemas = _schema_tokens(t.tools)
    fake.push(Reply(text="fine", usage=(90 + schemas, 2)))
    sink = LocalSink(t.emit, budget=Budget(max_tokens_per_run=60 + schemas))
    result = run_turn(TurnSpec(target, SYSTEM, t.tools), t.session, "hi", sink)
    assert result.finish_reason == "budget" and f"used {92 + schemas} of {60 + schemas} tokens" in result.text, result
    assert result.text.startswith("fine\n\n")


def test_a_prompt_the_budget_cannot_pay_for_is_not_sent(fake: FakeLLM, target: ModelTarget) -> None:
    # Given a budget smaller than the prompt's estimate
    t = Turn(target, MemoryVFS())
    sink = LocalSink(t.emit, budget=Budget(max_tokens_per_run=20))
    result = run_turn(TurnSpec(target, SYSTEM, t.tools), t.session, "x" * 200, sink)
    # Then no model call is made and the run ends "budget", naming it
    assert fake.requests == []
    assert result.finish_reason == "budget" and "maxTokensPerRun" in result.text and "prompt is about" in result.text
    assert [m["role"] for m in t.persisted()] == ["user"]


def test_no_token_budget_or_one_too_large_to_bind_leaves_the_request_as_it_was(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """Agents without a token budget send the request they sent before (OpenAI: no max_tokens;
    Anthropic: LiteLLM's default), and so does a budget larger than the model's own limit."""
    for budget in (None, Budget(max_seconds_per_run=60), Budget(max_tokens_per_instance=10**9)):
        t = Turn(target, MemoryVFS())
        run_turn(TurnSpec(target, SYSTEM, t.tools), t.session, "hi", LocalSink(t.emit, budget=budget))
    first, *rest = (req.body for req in fake.requests)
    assert all(body == first for body in rest)
    if target.provider == "openai":
        assert "max_tokens" not in first and "max_completion_tokens" not in first


class EchoParams(BaseModel):
    text: str


def _extra_tools() -> dict[str, Tool]:
    async def shout(p: EchoParams) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"loud": p.text.upper()}

    def boom(p: EchoParams) -> str:
        raise RuntimeError("kaboom")

    def refuse(p: EchoParams) -> str:
        raise ToolError("not allowed here")

    def big(p: EchoParams) -> str:
        return "y" * 5000

    return {
        name: Tool(name=name, description=name, parameters=EchoParams, fn=fn)
        for name, fn in {"shout": shout, "boom": boom, "refuse": refuse, "big": big}.items()
    }


def test_tool_failures_are_results_for_the_model(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(
        Reply(
            tool_calls=[
                ToolCall("shout", {"text": "hey"}),
                ToolCall("nope", {}),
                ToolCall("boom", {"text": "a"}),
                ToolCall("refuse", {"text": "a"}),
                ToolCall("shout", {"wrong": 1}),
                ToolCall("big", {"text": "a"}),
            ]
        ),
        Reply(text="handled"),
    )
    t = Turn(target, MemoryVFS(), tools=_extra_tools())
    result = t.run("try tools", tool_output_limit=1000)
    assert result.text == "handled" and result.error is None
    res = [e["result"] for e in t.events if e["type"] == "tool-result"]
    assert res[0] == {"loud": "HEY"}
    assert "unknown tool 'nope'" in res[1]["error"]
    assert "kaboom" in res[2]["error"]
    assert res[3] == {"error": "not allowed here"}
    assert "invalid arguments" in res[4]["error"]
    assert res[5].startswith("y" * 1000) and "truncated" in res[5] and len(res[5]) < 1100
    tool_msgs = [m for m in fake.requests[1].messages if m["role"] == "tool"]
    assert len(tool_msgs) == 6
    assert json.loads(tool_msgs[0]["content"]) == {"loud": "HEY"}
    assert tool_msgs[5]["content"] == res[5]


def test_max_steps_stops_with_a_valid_transcript(fake: FakeLLM, target: ModelTarget) -> None:
    def loop_forever(req: RecordedRequest) -> Reply:
        return Reply(tool_calls=[ToolCall("read_file", {"path": "/missing"})])

    fake.default = loop_forever
    t = Turn(target, MemoryVFS())
    t.steer = [[], [], ["late steer"]]  # run start, after step 1, (after step 2: not drained)
    result = t.run("go", max_steps=2)
    assert len(fake.requests) == 2
    assert result.finish_reason == "tool-calls" and result.steps == 2 and result.error is None
    assert t.events[-1]["type"] == "finish" and t.events[-1]["finishReason"] == "tool-calls"
    assert [m["role"] for m in t.persisted()] == ["user", "assistant", "tool", "assistant", "tool"]
    assert "file not found" in t.persisted()[-1]["content"]
    assert t.steer == [["late steer"]]  # not drained: the next run takes it


def test_a_run_goes_on_from_the_progress_its_crashed_attempt_recorded(fake: FakeLLM, target: ModelTarget) -> None:
    """A redelivered run starts from `sink.progress`: the earlier steps count against max_steps,
    the earlier tokens against the token budget and in the usage it reports; the loop keeps
    `progress` up to date after every model call (what the worker records with the step)."""
    fake.default = lambda req: Reply(tool_calls=[ToolCall("read_file", {"path": "/missing"})], usage=(7, 2))
    t = Turn(target, MemoryVFS())
    earlier = Usage(prompt_tokens=30, completion_tokens=3)
    sink = LocalSink(t.emit, run_id="r-again", progress=RunProgress(2, earlier))
    result = run_turn(TurnSpec(target, SYSTEM, t.tools, max_steps=3), t.session, "go", sink)
    assert len(fake.requests) == 1  # steps 1 and 2 were the crashed attempt's
    assert result.finish_reason == "tool-calls" and result.steps == 3
    assert result.usage == Usage(prompt_tokens=37, completion_tokens=5)
    assert t.events[-1]["usage"] == {"promptTokens": 37, "completionTokens": 5}
    assert sink.progress == RunProgress(3, Usage(prompt_tokens=37, completion_tokens=5))

    # The token budget counts the earlier tokens too: 35 spent of 50 leaves room for one call
    # (on a short transcript: its prompt is counted before each call, ≈ 6 tokens here)
    fake.reset()
    fake.default = lambda req: Reply(tool_calls=[ToolCall("read_file", {"path": "/missing"})], usage=(7, 2))
    short = Turn(target, MemoryVFS(), tools={})  # no schemas in the prompt's estimate
    sink = LocalSink(t.emit, progress=RunProgress(1, Usage(prompt_tokens=35)), budget=Budget(max_tokens_per_run=50))
    result = run_turn(TurnSpec(target, SYSTEM, short.tools, max_steps=10), short.session, "again", sink)
    assert len(fake.requests) == 1 and result.finish_reason == "budget" and "44 of 50" in result.text, result

    # A run whose crashed attempt used every step makes no model call
    fake.reset()
    sink = LocalSink(t.emit, progress=RunProgress(3, earlier))
    result = run_turn(TurnSpec(target, SYSTEM, t.tools, max_steps=3), t.session, None, sink)
    assert fake.requests == [] and result.finish_reason == "tool-calls" and result.usage == earlier


def test_a_crashed_tool_call_is_reported_as_outcome_unknown(fake: FakeLLM, target: ModelTarget) -> None:
    vfs = MemoryVFS()
    Session(vfs).append(user("start"), assistant("", [tool_call("call_dead", "write_file", {"path": "/a"})]))
    fake.push(Reply(text="ok"))
    t = Turn(target, vfs)
    t.run("resume")
    msgs = fake.requests[0].messages
    assert msgs[2]["tool_calls"][0]["id"] == "call_dead"
    assert msgs[3]["role"] == "tool" and msgs[3]["tool_call_id"] == "call_dead"
    assert json.loads(msgs[3]["content"]) == OUTCOME_UNKNOWN
    assert msgs[4] == {"role": "user", "content": "resume"}
    assert vfs.exists("/a") is False  # never silently re-run


def test_temperature_and_tools_reach_the_model(fake: FakeLLM, target: ModelTarget) -> None:
    fake.push(Reply(text="ok"))
    Turn(target, MemoryVFS()).run("hi", temperature=0.25)
    (req,) = fake.requests
    assert req.body["temperature"] == 0.25
    assert set(req.tool_names) == {"read_file", "write_file", "edit_file"}


EmitFn = Callable[[Event], None]


def test_a_non_streamed_turn_gives_the_same_events_and_history(fake: FakeLLM, target: ModelTarget) -> None:
    """Sync chats: same tool run, same transcript, one text delta per step (nobody watches deltas)."""
    turn = Turn(target, MemoryVFS())
    fake.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/n.txt", "content": "x"})]),
        Reply(text="stored it"),
    )
    result = turn.run("store x", stream=False)
    assert result.text == "stored it"
    assert turn.types() == ["tool-call", "tool-result", "step-finish", "text-delta", "step-finish", "finish"]
    assert turn.vfs.read("/n.txt") == b"x"
    prompt = sum(r.usage[0] for r in fake.requests[-2:])
    assert turn.events[-1]["usage"]["promptTokens"] == prompt
    roles = [m["role"] for m in turn.persisted()]
    assert roles == ["user", "assistant", "tool", "assistant"]


def test_each_message_is_encoded_once_however_long_the_conversation(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop keeps each message's JSON (`messages.model_json`) as the conversation grows: a
    turn encodes its own messages, not the whole history again (which made a step's request cost
    grow with the transcript), and the model still receives the whole conversation."""
    import regina.runtime.loop as loop_module
    import regina.runtime.models.direct as direct_module
    import regina.runtime.session as session_module
    from regina.runtime.messages import model_json

    counts = {"loop": 0, "session": 0, "direct": 0}

    def counting(where: str) -> Callable[[dict[str, Any]], bytes | None]:
        def encode(m: dict[str, Any]) -> bytes | None:
            counts[where] += 1
            return model_json(m)

        return encode

    for where, module in (("loop", loop_module), ("session", session_module)):
        monkeypatch.setattr(module, "model_json", counting(where))
    checked = direct_module.goes_out_as_is

    def whole_list(dumped: bytes) -> bool:
        counts["direct"] += 1
        return checked(dumped)

    monkeypatch.setattr(direct_module, "goes_out_as_is", whole_list)
    fake.reset()
    t = Turn(ModelTarget("openai", "openai/gpt-4o", "sk-test", fake.url + "/v1"), MemoryVFS())
    per_turn = []
    for n in range(8):
        before = sum(counts.values())
        assert t.run(f"message {n}").text == f"echo: message {n}"
        per_turn.append(sum(counts.values()) - before)
    assert counts["direct"] == 0  # no request's whole list was encoded: each went out as the loop kept it
    assert len(set(per_turn[1:])) == 1, per_turn  # the same work at 2 messages as at 16
    last = fake.requests[-1]
    assert [m["content"] for m in last.messages] == [SYSTEM] + [
        text for n in range(8) for text in (f"message {n}", f"echo: message {n}")
    ][:-1]
    # A route that walks the messages itself (Anthropic's format) keeps no JSON of them.
    counts.update(loop=0, session=0)
    fake.reset()
    other = Turn(ModelTarget("anthropic", "anthropic/claude-sonnet-4-5", "sk-ant-test", fake.url), MemoryVFS())
    for n in range(3):
        assert other.run(f"message {n}").text == f"echo: message {n}"
    assert counts == {"loop": 0, "session": 0, "direct": 0}


def test_hostile_tool_calls_and_results_are_tool_errors_not_a_failed_turn(fake: FakeLLM, target: ModelTarget) -> None:
    """Arguments a model may send (a lone surrogate escape, a `_raw` that is not text) and a
    result JSON cannot hold: each is a result the model sees; the turn and its history stay whole."""

    def odd(p: EchoParams) -> dict[Any, str]:
        return {(1, 2): "tuple key"}

    tools = {**_extra_tools(), "odd": Tool(name="odd", description="odd", parameters=EchoParams, fn=odd)}
    fake.push(
        Reply(
            tool_calls=[
                ToolCall("shout", {"text": "a\ud800b"}),
                ToolCall("shout", {"_raw": 5}),
                ToolCall("odd", {"text": "x"}),
            ]
        ),
        Reply(text="handled"),
    )
    t = Turn(target, MemoryVFS(), tools=tools)
    result = t.run("try tools")
    assert result.text == "handled" and result.error is None
    res = [e["result"] for e in t.events if e["type"] == "tool-result"]
    assert res[0] == {"loud": "A\ufffdB"}
    assert "not a valid JSON object: 5" in res[1]["error"]
    assert res[2] == "{(1, 2): 'tuple key'}"
    json.dumps(t.events)  # every event encodes
    saved = t.persisted()
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "tool", "tool", "assistant"]
    assert saved[1]["tool_calls"][0]["function"]["arguments"] == json.dumps({"text": "a\ufffdb"}, ensure_ascii=False)


def test_a_cancelled_tool_is_not_said_to_be_not_run_and_the_calls_after_it_are(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """A call cut short by a cancel may have done its work (a thread cannot be stopped, a
    process or server may have acted): its result says its effects are unknown, not that it was
    not run (the model would run it again). The calls after it were not run, and say so."""
    sinks: list[LocalSink] = []

    def slow_write(p: EchoParams) -> str:
        sinks[0].cancel.cancel("cancelled", "the run was cancelled")  # lands while it runs
        return f"wrote {p.text}"

    tools = {"slow_write": Tool("slow_write", "writes", EchoParams, slow_write)}
    fake.push(Reply(tool_calls=[ToolCall("slow_write", {"text": "a"}), ToolCall("slow_write", {"text": "b"})]))
    t = Turn(target, MemoryVFS(), tools)
    sink = LocalSink(t.emit, run_id="run-c")
    sinks.append(sink)
    result = run_turn(TurnSpec(target, SYSTEM, tools), t.session, "go", sink)
    assert result.finish_reason == "cancelled"
    first, second = [e["result"]["error"] for e in t.events if e["type"] == "tool-result"]
    assert first.startswith("cancelled while the tool ran") and "its effects are unknown" in first
    assert second == "cancelled: the run was cancelled; the tool was not run"


def test_a_provider_that_reports_no_usage_counts_the_estimate(fake: FakeLLM, target: ModelTarget) -> None:
    """A provider that tells no usage (zero) must not make a run free: the call counts
    compaction's estimate, characters / 4, in its step, its finish and the turn's usage."""
    fake.push(Reply(text="x" * 400, usage=(0, 0)))
    t = Turn(target, MemoryVFS())
    result = t.run("hello " * 40)
    assert result.error is None and result.text == "x" * 400
    # Anthropic's stream told one output token at its start: what a provider tells stands.
    assert result.usage.completion_tokens == (100 if target.provider == "openai" else 1)
    assert result.usage.prompt_tokens >= len("hello " * 40) // 4
    step = next(e for e in t.events if e["type"] == "step-finish")
    assert step["usage"] == t.events[-1]["usage"] == result.usage.as_dict()


def test_a_cancelled_run_ends_with_the_text_the_model_had_written_not_the_cancels_message(
    fake: FakeLLM, target: ModelTarget
) -> None:
    """Only a budget stop's text names its budget; a cancel's finish keeps the model's text."""
    sinks: list[LocalSink] = []

    def slow_write(p: EchoParams) -> str:
        sinks[0].cancel.cancel("cancelled", "the run was cancelled")
        return f"wrote {p.text}"

    tools = {"slow_write": Tool("slow_write", "writes", EchoParams, slow_write)}
    fake.push(Reply(text="working on it", tool_calls=[ToolCall("slow_write", {"text": "a"})]))
    t = Turn(target, MemoryVFS(), tools)
    sink = LocalSink(t.emit, run_id="run-t")
    sinks.append(sink)
    result = run_turn(TurnSpec(target, SYSTEM, tools), t.session, "go", sink)
    assert result.finish_reason == "cancelled"
    assert result.text == "working on it"
    assert [e["text"] for e in t.events if e["type"] == "finish"] == ["working on it"]
