"""The fake LLM server, driven through LiteLLM exactly as the runtime calls it.

Every other test trusts this server to speak both wire formats the way LiteLLM expects, so
each behaviour is checked end to end: text, tool calls, usage, streaming, errors, scripting.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: never fetch the cost map

import litellm  # noqa: E402 - must come after the environment above

from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall  # noqa: E402
from tests.harness.ports import free_port  # noqa: E402

litellm.suppress_debug_info = True

ROOT = Path(__file__).resolve().parents[2]

WRITE_FILE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "description": "Write a file.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
}
READ_FILE = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}

# (model string, which api_base, api key, wire format the fake should see)
PROVIDERS = [
    pytest.param("openai/gpt-4o", "/v1", "sk-test", "openai", id="openai"),
    pytest.param("gpt-4o", "/v1", "sk-test", "openai", id="openai-bare"),
    pytest.param("anthropic/claude-sonnet-4-5", "", "sk-ant-test", "anthropic", id="anthropic"),
    pytest.param("claude-sonnet-4-5", "", "sk-ant-test", "anthropic", id="anthropic-bare"),
    pytest.param("vercel_ai_gateway/anthropic/claude-sonnet-4-5", "/v1", "vck-test", "openai", id="vercel"),
]
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake: FakeLLM) -> None:
    fake.reset()
    # A stream LiteLLM abandoned (an error status mid-test) leaves an httpx line generator
    # behind; if the GC finalizes it inside httpcore's pool lock (the next call's
    # _assign_requests_to_connections), closing it re-takes that lock and the test process
    # deadlocks. Collect such leftovers here, outside any lock.
    gc.collect()


def complete(
    fake: FakeLLM, model: str, base: str, key: str, messages: list[dict[str, Any]], stream: bool, **kwargs: Any
) -> Any:
    """One LiteLLM call; a stream is consumed and rebuilt into a full response."""
    response = litellm.completion(
        model=model, api_base=fake.url + base, api_key=key, messages=messages, stream=stream, **kwargs
    )
    if not stream:
        return response
    chunks = list(response)
    return litellm.stream_chunk_builder(chunks, messages=messages)


def expected_usage(req: RecordedRequest, completion_text: str) -> tuple[int, int]:
    return len(req.all_text) // 4 + 1, len(completion_text) // 4 + 1


@pytest.mark.parametrize(("model", "base", "key", "api"), PROVIDERS)
@STREAM
def test_text_reply_and_usage(fake: FakeLLM, model: str, base: str, key: str, api: str, stream: bool) -> None:
    fake.push(Reply(text="Hello there, how are you today?"))
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]

    response = complete(fake, model, base, key, messages, stream, tools=[WRITE_FILE])

    assert response.choices[0].message.content == "Hello there, how are you today?"
    assert response.choices[0].finish_reason == "stop"
    (req,) = fake.requests
    assert req.api == api
    assert req.path == ("/v1/chat/completions" if api == "openai" else "/v1/messages")
    assert req.stream is stream
    assert req.usage == expected_usage(req, "Hello there, how are you today?")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == req.usage
    assert req.last_user_text == "Say hello"
    assert req.tool_names == ["write_file"]
    assert req.messages[0] == {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize(("model", "base", "key", "api"), PROVIDERS)
@STREAM
def test_tool_calls_round_trip(fake: FakeLLM, model: str, base: str, key: str, api: str, stream: bool) -> None:
    prefix = "call_" if api == "openai" else "toolu_"
    written = {"path": "/notes/a.txt", "content": 'line one\nline "two"'}
    fake.push(
        Reply(
            text="Writing now.",
            tool_calls=[
                ToolCall("write_file", written),
                ToolCall("read_file", {"path": "/notes/a.txt"}, id=prefix + "fixed"),
            ],
        )
    )
    messages = [{"role": "user", "content": "write then read"}]

    response = complete(fake, model, base, key, messages, stream, tools=[WRITE_FILE, READ_FILE])

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["write_file", "read_file"]
    assert json.loads(calls[0].function.arguments) == written
    assert json.loads(calls[1].function.arguments) == {"path": "/notes/a.txt"}
    (req,) = fake.requests
    assert [c.id for c in calls] == [tc.id for tc in req.reply.tool_calls]
    assert calls[0].id.startswith(prefix) and calls[1].id == prefix + "fixed"
    args_json = "".join(json.dumps(tc.args) for tc in req.reply.tool_calls)
    assert req.usage == expected_usage(req, "Writing now." + args_json)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == req.usage


@pytest.mark.parametrize(("model", "base", "key", "api"), [PROVIDERS[0], PROVIDERS[2]])
@STREAM
def test_tool_only_reply(fake: FakeLLM, model: str, base: str, key: str, api: str, stream: bool) -> None:
    fake.push(Reply(tool_calls=[ToolCall("read_file", {"path": "/x"})]))

    msgs = [{"role": "user", "content": "read"}]
    response = complete(fake, model, base, key, msgs, stream, tools=[READ_FILE])

    assert not response.choices[0].message.content
    assert response.choices[0].message.tool_calls[0].function.name == "read_file"


@pytest.mark.parametrize(("model", "base", "key", "api"), [PROVIDERS[0], PROVIDERS[2]])
@STREAM
def test_max_tokens_cuts_the_reply_as_a_provider_does(
    fake: FakeLLM, model: str, base: str, key: str, api: str, stream: bool
) -> None:
    """A reply longer than the request's max_tokens is cut to it and finishes `length`; a
    shorter one is untouched (the runtime's token budgets rely on it)."""
    fake.push(
        Reply(text="a" * 400, tool_calls=[ToolCall("read_file", {"path": "/x"})], usage=(30, 100)),
        Reply(text="short", usage=(30, 5)),
    )
    msgs = [{"role": "user", "content": "write a lot"}]

    cut = complete(fake, model, base, key, msgs, stream, tools=[READ_FILE], max_tokens=25)
    whole = complete(fake, model, base, key, msgs, stream, tools=[READ_FILE], max_tokens=25)

    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "a" * 100 and not cut.choices[0].message.tool_calls
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (30, 25)
    assert fake.requests[0].body["max_tokens"] == 25
    assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.content == "short"


@pytest.mark.parametrize(("model", "base", "key", "api"), [PROVIDERS[0], PROVIDERS[2]])
def test_conversation_is_normalized(fake: FakeLLM, model: str, base: str, key: str, api: str) -> None:
    """A tool-use turn as the runtime resends it reads the same from either wire format."""
    messages = [
        {"role": "system", "content": "SYS prompt"},
        {"role": "user", "content": "please write"},
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "write_file", "arguments": json.dumps({"path": "/a", "content": "x"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "wrote 1 byte"},
        {"role": "user", "content": "thanks"},
    ]

    complete(fake, model, base, key, messages, False, tools=[WRITE_FILE])

    (req,) = fake.requests
    assert [(m["role"], m["content"]) for m in req.messages] == [
        ("system", "SYS prompt"),
        ("user", "please write"),
        ("assistant", "ok"),
        ("tool", "wrote 1 byte"),
        ("user", "thanks"),
    ]
    assistant, tool = req.messages[2], req.messages[3]
    assert assistant["tool_calls"][0]["name"] == "write_file"
    assert assistant["tool_calls"][0]["args"] == {"path": "/a", "content": "x"}
    assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert req.all_text == "SYS prompt\nplease write\nok\nwrote 1 byte\nthanks"
    assert req.last_user_text == "thanks"
    assert req.reply.text == "echo: thanks"  # the built-in default


def test_push_for_routes_by_marker_before_global(fake: FakeLLM) -> None:
    fake.push(Reply(text="global one"), Reply(text="global two"))
    fake.push_for("AGENT-B", Reply(text="for b"))

    def ask(system: str) -> str:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": "go"}]
        return str(complete(fake, "openai/gpt-4o", "/v1", "sk-test", msgs, False).choices[0].message.content)

    assert ask("I am AGENT-A") == "global one"
    assert ask("I am AGENT-B") == "for b"
    assert ask("I am AGENT-B") == "global two"  # its own queue is empty: the global one applies
    assert ask("I am AGENT-B") == "echo: go"  # nothing scripted: the default
    assert fake.pending() == 0


def test_custom_default_and_reset(fake: FakeLLM) -> None:
    fake.default = lambda req: Reply(text=f"{len(req.messages)} messages, tools {req.tool_names}")
    msgs = [{"role": "user", "content": "hi"}]

    response = complete(fake, "anthropic/claude-sonnet-4-5", "", "sk-ant-test", msgs, True, tools=[READ_FILE])

    assert response.choices[0].message.content == "1 messages, tools ['read_file']"
    fake.push(Reply(text="left over"))
    fake.reset()
    assert fake.requests == [] and fake.pending() == 0
    assert complete(fake, "gpt-4o", "/v1", "sk-test", msgs, False).choices[0].message.content == "echo: hi"


@pytest.mark.parametrize(("model", "base", "key", "api"), [PROVIDERS[0], PROVIDERS[2], PROVIDERS[4]])
@pytest.mark.parametrize(
    ("status", "error"),
    [(400, litellm.BadRequestError), (429, litellm.RateLimitError), (500, litellm.InternalServerError)],
)
@STREAM
def test_error_status_raises_in_litellm(
    fake: FakeLLM, model: str, base: str, key: str, api: str, status: int, error: type[Exception], stream: bool
) -> None:
    fake.push(Reply(error_status=status, error_message="scripted failure"), Reply(text="after"))
    msgs = [{"role": "user", "content": "hi"}]

    with pytest.raises(error, match="scripted failure"):
        complete(fake, model, base, key, msgs, stream)

    assert len(fake.requests) == 1  # no SDK retry ate the next scripted reply
    assert complete(fake, model, base, key, msgs, stream).choices[0].message.content == "after"


@pytest.mark.parametrize(("model", "base", "key", "api"), [PROVIDERS[0], PROVIDERS[2]])
def test_stream_flushes_each_chunk(fake: FakeLLM, model: str, base: str, key: str, api: str) -> None:
    fake.push(Reply(text="one two three four five", chunk_delay=0.1))
    start = time.monotonic()
    stream = litellm.completion(
        model=model, api_base=fake.url + base, api_key=key, messages=[{"role": "user", "content": "count"}], stream=True
    )
    first_at = None
    pieces = []
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first_at = first_at or time.monotonic() - start
            pieces.append(delta)
    total = time.monotonic() - start

    assert pieces == ["one ", "two ", "three ", "four ", "five"]
    assert total >= 0.4  # four gaps of 0.1 s
    assert first_at is not None and first_at < 0.2 < total - 0.2


def test_requests_are_recorded_before_the_delayed_answer(fake: FakeLLM) -> None:
    fake.push(Reply(text="slow", delay=0.5))
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(
            complete(fake, "gpt-4o", "/v1", "sk-test", [{"role": "user", "content": "wait"}], False)
        )
    )
    caller.start()

    (req,) = fake.wait_for_requests(1, timeout=5)
    assert not result and req.reply.text == "slow" and req.headers["authorization"] == "Bearer sk-test"
    caller.join(5)
    assert result[0].choices[0].message.content == "slow"
    with pytest.raises(AssertionError, match="expected 2"):
        fake.wait_for_requests(2, timeout=0.05)


def test_raw_openai_sse_shape(fake: FakeLLM) -> None:
    fake.push(Reply(text="ab cd", usage=(7, 3)))
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "x"}],
    }
    with httpx.stream("POST", fake.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["ab ", "cd"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 7


def test_raw_anthropic_sse_shape(fake: FakeLLM) -> None:
    fake.push(Reply(text="hi", tool_calls=[ToolCall("read_file", {"path": "/p"})], chunk_size=4))
    body = {
        "model": "m",
        "stream": True,
        "max_tokens": 5,
        "system": [{"type": "text", "text": "S"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    with httpx.stream("POST", fake.url + "/v1/messages", json=body) as response:
        events = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2
    assert fake.requests[0].messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]


def test_bad_requests(fake: FakeLLM) -> None:
    with httpx.Client(base_url=fake.url) as client:
        assert client.post("/v1/chat/completions", content=b"{nope").status_code == 400
        assert client.post("/v1/embeddings", json={}).status_code == 404
        assert client.get("/healthz").json() == {"ok": True}
    assert fake.requests == []


def test_runs_as_its_own_process() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "tests.harness.fake_llm", "--port", str(port), "--text", "pong"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}"
        body = {"model": "m", "messages": [{"role": "user", "content": "ping"}]}
        reply = httpx.post(url + "/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == "pong"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
