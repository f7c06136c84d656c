"""Stream events of a run (SPEC §4) and their one NDJSON encoding.

Every event is a pydantic model with a literal ``type`` tag; on the wire keys are camelCase:

    {"type":"text-delta","textDelta":"Hel"}
    {"type":"tool-call","toolCallId":"call_1","toolName":"read_file","args":{...}}
    {"type":"tool-result","toolCallId":"call_1","toolName":"read_file","result":...}
    {"type":"step-finish","finishReason":"tool-calls","usage":{"promptTokens":1,"completionTokens":2}}
    {"type":"finish","finishReason":"stop","text":"...","usage":{...}}
    {"type":"error","error":"model provider error: 500 ..."}
    {"type":"steer-applied","steerId":"steer-…","message":"..."}
    {"type":"tool-degraded","server":"search","error":"connection closed"}

The relay may add ``seq`` / ``runId`` to an event dict; parsing ignores unknown keys, and
`event_to_dict` / `to_ndjson` accept such extras so they stay on the line.
`to_ndjson` is the only place NDJSON is produced.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

__all__ = [
    "Usage",
    "TextDelta",
    "ToolCallEvent",
    "ToolResultEvent",
    "StepFinish",
    "Finish",
    "ErrorEvent",
    "SteerApplied",
    "ToolDegraded",
    "Event",
    "event_to_dict",
    "event_from_dict",
    "to_ndjson",
]


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown keys (seq, runId…) are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Usage(_Wire):
    """Token usage of one model call, one step or a whole run."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        """The wire form `{"promptTokens", "completionTokens"}`."""
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens}


class TextDelta(_Wire):
    """An incremental chunk of the model's text."""

    type: Literal["text-delta"] = "text-delta"
    text_delta: str


class ToolCallEvent(_Wire):
    """The model asked for a tool; emitted before the tool runs."""

    type: Literal["tool-call"] = "tool-call"
    tool_call_id: str
    tool_name: str
    args: dict[str, Any]


class ToolResultEvent(_Wire):
    """A tool's result (or `{"error": …}`), with the same `toolCallId` as its call."""

    type: Literal["tool-result"] = "tool-result"
    tool_call_id: str
    tool_name: str
    result: Any


class StepFinish(_Wire):
    """End of one model step (one model call and the tools it asked for)."""

    type: Literal["step-finish"] = "step-finish"
    finish_reason: str
    usage: Usage


class Finish(_Wire):
    """Last event of a successful run: the final text and the usage summed over steps."""

    type: Literal["finish"] = "finish"
    finish_reason: str
    text: str
    usage: Usage


class ErrorEvent(_Wire):
    """Last event of a failed run, with what its model calls spent before it failed (the run's
    and its instance's usage and budget count it)."""

    type: Literal["error"] = "error"
    error: str
    usage: Usage = Field(default_factory=Usage)


class SteerApplied(_Wire):
    """A steering message entered the conversation (its receipt, SPEC §12)."""

    type: Literal["steer-applied"] = "steer-applied"
    steer_id: str
    message: str


class ToolDegraded(_Wire):
    """An MCP server dropped mid-run: its tool calls fail until it is reconnected (SPEC §12)."""

    type: Literal["tool-degraded"] = "tool-degraded"
    server: str
    error: str


Event = Annotated[
    TextDelta | ToolCallEvent | ToolResultEvent | StepFinish | Finish | ErrorEvent | SteerApplied | ToolDegraded,
    Field(discriminator="type"),
]

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(cast(Any, Event))  # no ignore: mypy judges it by cache state


def event_to_dict(ev: Event, **extra: Any) -> dict[str, Any]:
    """The wire dict of an event (camelCase keys), plus `extra` keys such as seq / runId."""
    d = ev.model_dump(by_alias=True)
    if extra:
        d.update(extra)
    return d


def event_from_dict(d: dict[str, Any]) -> Event:
    """Parse a wire dict (extra keys allowed) back into its event model.

    Raises:
        pydantic.ValidationError: unknown `type` or missing fields.
    """
    return _EVENT_ADAPTER.validate_python(d)


def to_ndjson(ev: Event | dict[str, Any], **extra: Any) -> bytes:
    """One NDJSON line: compact JSON, UTF-8, ending in a newline."""
    d = dict(ev) if isinstance(ev, dict) else event_to_dict(ev)
    if extra:
        d.update(extra)
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"
