"""Stream events: exact wire keys (SPEC §4), round trips, and the one NDJSON encoder."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from regina.runtime.events import (
    ErrorEvent,
    Finish,
    StepFinish,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
    event_from_dict,
    event_to_dict,
    to_ndjson,
)

USAGE = Usage(prompt_tokens=3, completion_tokens=4)

CASES = [
    (TextDelta(text_delta="Hel"), {"type": "text-delta", "textDelta": "Hel"}),
    (
        ToolCallEvent(tool_call_id="call_1", tool_name="read_file", args={"path": "/a"}),
        {"type": "tool-call", "toolCallId": "call_1", "toolName": "read_file", "args": {"path": "/a"}},
    ),
    (
        ToolResultEvent(tool_call_id="call_1", tool_name="read_file", result={"ok": [1, 2]}),
        {"type": "tool-result", "toolCallId": "call_1", "toolName": "read_file", "result": {"ok": [1, 2]}},
    ),
    (
        StepFinish(finish_reason="tool-calls", usage=USAGE),
        {"type": "step-finish", "finishReason": "tool-calls", "usage": {"promptTokens": 3, "completionTokens": 4}},
    ),
    (
        Finish(finish_reason="stop", text="hi", usage=USAGE),
        {
            "type": "finish",
            "finishReason": "stop",
            "text": "hi",
            "usage": {"promptTokens": 3, "completionTokens": 4},
        },
    ),
    (
        ErrorEvent(error="model provider error: 500 boom"),
        {
            "type": "error",
            "error": "model provider error: 500 boom",
            "usage": {"promptTokens": 0, "completionTokens": 0},
        },
    ),
]


@pytest.mark.parametrize(("event", "wire"), CASES, ids=[c[1]["type"] for c in CASES])
def test_wire_shape_is_exact_and_round_trips(event: object, wire: dict[str, object]) -> None:
    assert event_to_dict(event) == wire  # type: ignore[arg-type]
    assert list(event_to_dict(event)) == list(wire)  # type: ignore[arg-type]
    assert event_from_dict(wire) == event
    line = to_ndjson(event)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line == json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"  # compact
    assert json.loads(line) == wire


def test_parsing_ignores_relay_extras_and_to_ndjson_keeps_them() -> None:
    ev = event_from_dict({"type": "text-delta", "textDelta": "x", "seq": 7, "runId": "r1"})
    assert ev == TextDelta(text_delta="x")
    assert json.loads(to_ndjson(ev, seq=7, runId="r1")) == {
        "type": "text-delta",
        "textDelta": "x",
        "seq": 7,
        "runId": "r1",
    }
    assert json.loads(to_ndjson({"type": "error", "error": "e", "seq": 1})) == {"type": "error", "error": "e", "seq": 1}


def test_unknown_type_and_missing_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        event_from_dict({"type": "nope"})
    with pytest.raises(ValidationError):
        event_from_dict({"type": "tool-call", "toolCallId": "c"})


def test_usage_adds_and_has_wire_form() -> None:
    total = Usage() + USAGE + Usage(prompt_tokens=1, completion_tokens=1)
    assert total == Usage(prompt_tokens=4, completion_tokens=5)
    assert total.as_dict() == {"promptTokens": 4, "completionTokens": 5}


def test_ndjson_keeps_unicode_and_newlines_inside_one_line() -> None:
    line = to_ndjson(TextDelta(text_delta="héllo\nwörld"))
    assert line.count(b"\n") == 1
    assert json.loads(line)["textDelta"] == "héllo\nwörld"
