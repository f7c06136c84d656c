"""The offline demo model, called through LiteLLM like any real provider."""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
import pytest  # noqa: E402

from regina.config import Settings  # noqa: E402
from regina.providers import resolve_model_target  # noqa: E402
from regina.runtime.models.demo import demo_reply, register_demo_provider  # noqa: E402

MODEL = resolve_model_target("demo", "demo", Settings(), {}).litellm_model


def fn_tool(name: str, **props: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": {p: {"type": t} for p, t in props.items()}},
        },
    }


TOOLS = [
    fn_tool("write_file", path="string", content="string"),
    fn_tool("read_file", path="string"),
    fn_tool("bash", command="string"),
]


@pytest.fixture(autouse=True)
def _registered() -> None:
    register_demo_provider()


def stream(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[str, list[Any], Any, Any]:
    text, calls, finish, usage = "", [], None, None
    chunks = litellm.completion(
        model=MODEL, messages=messages, tools=tools, stream=True, stream_options={"include_usage": True}
    )
    for chunk in chunks:
        if getattr(chunk, "usage", None):
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        calls.extend(delta.tool_calls or [])
        finish = chunk.choices[0].finish_reason or finish
    return text, calls, finish, usage


def test_register_is_idempotent() -> None:
    register_demo_provider()
    register_demo_provider()
    assert [p["provider"] for p in litellm.custom_provider_map].count("regina-demo") == 1
    assert MODEL == "regina-demo/demo"


def test_plain_text_completion_counts_messages_and_usage() -> None:
    messages = [{"role": "system", "content": "You are demo."}, {"role": "user", "content": "Hi there"}]
    response = litellm.completion(model=MODEL, messages=messages)
    text = response.choices[0].message.content
    assert text.startswith("Hello! I am the Regina demo agent")
    assert "Hi there" in text and "2 messages" in text
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == len("You are demo.Hi there") // 4
    assert response.usage.completion_tokens == len(text) // 4


def test_memory_is_visible_across_turns() -> None:
    messages = [
        {"role": "user", "content": "My name is Ada"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is my name?"},
    ]
    text = litellm.completion(model=MODEL, messages=messages).choices[0].message.content
    assert "“My name is Ada”" in text and "3 messages" in text and "2 from you" in text


def test_streamed_text_matches_non_streamed() -> None:
    messages = [{"role": "user", "content": "Tell me something"}]
    expected = litellm.completion(model=MODEL, messages=messages).choices[0].message.content
    text, calls, finish, usage = stream(messages)
    assert text == expected and calls == [] and finish == "stop"
    assert usage is not None and usage.completion_tokens == len(expected) // 4 and usage.prompt_tokens >= 1


def test_write_tool_call_round_trip_non_streamed() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "write hello world to /notes/a.txt"}]
    response = litellm.completion(model=MODEL, messages=messages, tools=TOOLS)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "write_file"
    assert json.loads(call.function.arguments) == {"path": "/notes/a.txt", "content": "hello world"}
    messages.append(choice.message.model_dump())
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "wrote 11 bytes to /notes/a.txt"})
    answer = litellm.completion(model=MODEL, messages=messages, tools=TOOLS).choices[0]
    assert answer.finish_reason == "stop"
    assert answer.message.content == "Done. The write_file tool returned: wrote 11 bytes to /notes/a.txt"


def test_bash_tool_call_streamed() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "run ls -la /"}]
    text, calls, finish, usage = stream(messages, TOOLS)
    assert text == "" and finish == "tool_calls"
    [call] = calls
    assert call.function.name == "bash" and json.loads(call.function.arguments) == {"command": "ls -la /"}
    assert call.id
    assert usage is not None and usage.completion_tokens >= 1
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "bash", "arguments": call.function.arguments},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "bin\netc"})
    text, calls, finish, _ = stream(messages, TOOLS)
    assert calls == [] and finish == "stop"
    assert text == "Done. The bash tool returned: bin\netc"


def test_argument_names_follow_the_offered_schema() -> None:
    tools = [fn_tool("write_file", file_path="string", text="string")]
    reply = demo_reply([{"role": "user", "content": 'write "a b" into x.txt'}], tools)
    assert reply.tool_calls[0].arguments == {"file_path": "x.txt", "text": "a b"}


def test_use_any_offered_tool_with_json_args() -> None:
    tools = [fn_tool("word_count", text="string")]
    response = litellm.completion(
        model=MODEL, messages=[{"role": "user", "content": 'use word_count {"text": "one two"}'}], tools=tools
    )
    [call] = response.choices[0].message.tool_calls
    assert call.function.name == "word_count" and json.loads(call.function.arguments) == {"text": "one two"}


def test_tool_not_offered_is_explained_not_called() -> None:
    response = litellm.completion(model=MODEL, messages=[{"role": "user", "content": "run ls"}])
    choice = response.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    assert "bash tool" in choice.message.content and "not available" in choice.message.content


def test_summarize_request_lists_user_messages() -> None:
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": [{"type": "text", "text": "Please summarize the conversation."}]},
    ]
    text = litellm.completion(model=MODEL, messages=messages).choices[0].message.content
    assert text.startswith("Summary of the earlier conversation") and "“first question”" in text


def test_deterministic() -> None:
    messages = [{"role": "user", "content": "same input"}]
    first = litellm.completion(model=MODEL, messages=messages).choices[0].message.content
    second = litellm.completion(model=MODEL, messages=messages).choices[0].message.content
    assert first == second


def test_async_completion_and_streaming() -> None:
    import asyncio

    async def run() -> tuple[str, str]:
        messages = [{"role": "user", "content": "hello async"}]
        response = await litellm.acompletion(model=MODEL, messages=messages)
        text = ""
        async for chunk in await litellm.acompletion(model=MODEL, messages=messages, stream=True):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        return response.choices[0].message.content, text

    full, streamed = asyncio.run(run())
    assert full == streamed and "hello async" in full
