"""The direct route's plain OpenAI chunks (regina/runtime/models/openai_chunks.py) accumulate to
the same parts as LiteLLM's pydantic chunks, for text, usage, tool calls (with and without an
index), finish reasons LiteLLM maps, and an error inside the stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litellm.llms.openai.chat.gpt_transformation import OpenAIChatCompletionStreamingHandler

from regina.runtime.models.openai_chunks import LeanOpenAIStream
from regina.runtime.models.stream import StreamAcc


def _sse(*events: dict[str, Any] | str) -> list[str]:
    lines = []
    for e in events:
        lines += [f"data: {e if isinstance(e, str) else json.dumps(e)}", ""]
    return lines


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice], **extra}


def _parts(cls: type, lines: list[str]) -> list[Any]:
    acc = StreamAcc()
    out: list[Any] = []
    for chunk in cls(streaming_response=iter(lines), sync_stream=True, json_mode=False):
        out += list(acc.feed(chunk))
    out += list(acc.end())
    return [p if not hasattr(p, "raw") else (p.id, p.name, p.args, p.raw) for p in out]


STREAMS = {
    "text and usage": _sse(
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({}, "stop"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}},
        "[DONE]",
    ),
    "tool calls in fragments": _sse(
        _chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "bash"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"ls"}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "x", "arguments": "{}"}}]}),
        _chunk({}, "tool_calls"),
        "[DONE]",
    ),
    "tool calls without an index": _sse(
        _chunk(
            {
                "tool_calls": [
                    {"id": "call_a", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "call_b", "function": {"name": "b", "arguments": "{}"}},
                ]
            }
        ),
        _chunk({}, "tool_calls"),
    ),
    "a finish reason LiteLLM maps, no [DONE]": _sse(_chunk({"content": "x"}), _chunk({}, "eos")),
    "no finish reason": _sse(_chunk({"content": "x"}), "[DONE]"),
    "lines that are not JSON": ["", ": keep-alive", *_sse(_chunk({"content": "x"}, "length"))],
    "SSE lines read LiteLLM's way": [
        "   ",
        "data:" + json.dumps(_chunk({"content": "no space after data:"})),
        "data: {not json",
        "event: ping",
        'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "n"}, "finish_reason": null}], "x": NaN}',
        "data: " + json.dumps(_chunk({"content": "big"}, n=2**70)),
        *_sse(_chunk({"content": "after"}, "stop")),
    ],
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_plain_chunks_give_the_parts_litellms_chunks_give(name: str) -> None:
    lines = STREAMS[name]
    assert _parts(LeanOpenAIStream, lines) == _parts(OpenAIChatCompletionStreamingHandler, lines)


def test_an_error_inside_the_stream_is_litellms_error() -> None:
    lines = _sse(_chunk({"content": "x"}), {"error": {"message": "overloaded", "code": 503}})
    errors = []
    for cls in (LeanOpenAIStream, OpenAIChatCompletionStreamingHandler):
        with pytest.raises(Exception) as info:
            _parts(cls, lines)
        errors.append((type(info.value), getattr(info.value, "status_code", None), str(info.value)))
    assert errors[0] == errors[1]
    assert errors[0][1] == 503


def test_a_delta_that_says_done_is_kept_where_litellm_drops_it() -> None:
    """Only a line whose payload is `[DONE]` ends the stream: LiteLLM ends a chunk at "[DONE]"
    anywhere in the line, so text or tool arguments holding it were lost (a markdown checklist
    written by a tool call came out short, a whole call in one chunk vanished)."""
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "write_file", "arguments": ""}}
    lines = _sse(
        _chunk({"content": "says [DONE] inside"}),
        _chunk({"tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"content": "- [DONE] ship"}'}}]}),
        _chunk({}, "tool_calls"),
        "[DONE]",
    )
    ours = _parts(LeanOpenAIStream, lines)
    assert "says [DONE] inside" in repr(ours) and "- [DONE] ship" in repr(ours)
    assert ours != _parts(OpenAIChatCompletionStreamingHandler, lines)  # LiteLLM's still drops them
