"""Streamed chunks → TextPart… ToolCallPart… FinishPart, and the direct-route choice."""

from __future__ import annotations

from typing import Any

import pytest

from regina.providers import ModelTarget
from regina.runtime.events import Usage
from regina.runtime.models import FinishPart, TextPart, ToolCallPart, get_litellm
from regina.runtime.models.direct import route_for
from regina.runtime.models.stream import StreamAcc


def _chunk(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> Any:
    from litellm.types.utils import ModelResponseStream

    delta: dict[str, Any] = {"content": content}
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    kwargs: dict[str, Any] = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        kwargs["usage"] = usage
    return ModelResponseStream(**kwargs)


def _run(chunks: list[Any]) -> list[Any]:
    acc = StreamAcc()
    out = [p for c in chunks for p in acc.feed(c)]
    return out + list(acc.end())


def test_text_chunks_then_finish_with_usage() -> None:
    parts = _run(
        [
            _chunk("he"),
            _chunk("llo"),
            _chunk(finish="stop"),
            _chunk(usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}),
        ]
    )
    assert parts == [TextPart("he"), TextPart("llo"), FinishPart("stop", Usage(prompt_tokens=7, completion_tokens=2))]


def test_a_surrogate_pair_split_across_chunks_is_joined_and_a_lone_half_replaced() -> None:
    texts = [
        p.text
        for p in _run([_chunk("x\ud83d"), _chunk("\ude00y"), _chunk("z\ud83d"), _chunk(finish="stop")])
        if isinstance(p, TextPart)
    ]
    assert texts == ["x", "\U0001f600y", "z", "\ufffd"]
    texts = [p.text for p in _run([_chunk("a \udc00 b"), _chunk(finish="stop")]) if isinstance(p, TextPart)]
    assert texts == ["a \ufffd b"]


def test_tool_call_fragments_are_joined_and_win_over_the_finish_reason() -> None:
    frag1 = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "shout", "arguments": '{"te'}}
    frag2 = {"index": 0, "function": {"arguments": 'xt": "hi"}'}}
    parts = _run([_chunk(tool_calls=[frag1]), _chunk(tool_calls=[frag2]), _chunk(finish="stop")])
    assert parts[0] == ToolCallPart(id="call_1", name="shout", args={"text": "hi"}, raw='{"text": "hi"}')
    assert isinstance(parts[1], FinishPart) and parts[1].reason == "tool-calls"


def test_usage_in_parts_keeps_the_largest_counts() -> None:
    """Anthropic sends input tokens at message_start and output tokens at message_delta."""
    parts = _run(
        [
            _chunk(usage={"prompt_tokens": 30, "completion_tokens": 1, "total_tokens": 31}),
            _chunk("x"),
            _chunk(finish="end_turn", usage={"prompt_tokens": 0, "completion_tokens": 12, "total_tokens": 12}),
        ]
    )
    assert parts[-1] == FinishPart("stop", Usage(prompt_tokens=30, completion_tokens=12))


def test_generic_chunk_dicts_are_understood() -> None:
    done = {"text": "", "is_finished": True, "finish_reason": "stop", "usage": None, "index": 0, "tool_use": None}
    tool = {
        "text": "",
        "is_finished": False,
        "finish_reason": "",
        "index": 0,
        "usage": None,
        "tool_use": {"id": "t1", "index": 0, "type": "function", "function": {"name": "f", "arguments": "{}"}},
    }
    parts = _run([{**done, "text": "a", "finish_reason": ""}, tool, done])
    assert parts == [
        TextPart("a"),
        ToolCallPart(id="t1", name="f", args={}, raw="{}"),
        FinishPart("tool-calls", Usage()),
    ]


def test_no_usage_reported_gives_zero_usage() -> None:
    assert _run([_chunk("x"), _chunk(finish="length")])[-1] == FinishPart("length", Usage())


@pytest.mark.parametrize(
    ("litellm_model", "api_base", "expected"),
    [
        ("openai/gpt-4o", None, ("openai", "gpt-4o", "https://api.openai.com/v1")),
        ("openai/gpt-4o", "http://127.0.0.1:9/v1/", ("openai", "gpt-4o", "http://127.0.0.1:9/v1")),
        (
            "anthropic/claude-sonnet-4-5",
            None,
            ("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com/v1/messages"),
        ),
        ("anthropic/claude-x", "http://127.0.0.1:9", ("anthropic", "claude-x", "http://127.0.0.1:9/v1/messages")),
    ],
)
def test_openai_and_anthropic_targets_take_the_direct_route(
    litellm_model: str, api_base: str | None, expected: tuple[str, str, str]
) -> None:
    get_litellm()
    route = route_for(ModelTarget(provider=expected[0], litellm_model=litellm_model, api_key="k", api_base=api_base))
    assert route is not None and (route.provider, route.model, route.api_base) == expected


@pytest.mark.parametrize(
    "litellm_model",
    [
        "regina-demo/echo",
        "vercel_ai_gateway/openai/gpt-4o",
        "groq/llama3-8b",
        "openai/o3-pro",
        "openai/responses/gpt-4o",
    ],
)
def test_other_providers_and_responses_only_models_go_through_litellm_completion(litellm_model: str) -> None:
    get_litellm()
    assert route_for(ModelTarget(provider="x", litellm_model=litellm_model, api_key="k", api_base=None)) is None
