"""What one model call takes (`ModelRequest`) and the small tagged deltas it yields, whichever
route made it.

- `TextPart(text)`                    a chunk of the model's text;
- `ToolCallPart(id, name, args, raw)` one complete tool call (arguments that are not a JSON object
  become `{"_raw": "<text>"}` so the tool reports the problem to the model instead of the run
  failing);
- `FinishPart(reason, usage)`         last: `stop` · `tool-calls` · `length` · `content-filter`
  · `other`, with the call's usage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from regina.runtime.events import Usage

__all__ = ["ModelRequest", "TextPart", "ToolCallPart", "FinishPart", "ModelDelta", "finish_part", "parse_args"]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One call's input, the same for every route: the conversation, tools and limits."""

    messages: Sequence[dict[str, Any]]
    tools: Sequence[dict[str, Any]] | None = None
    temperature: float | None = None
    timeout: float | None = 600.0
    #: `messages.model_json` of each message, in order, when the caller keeps them (the loop
    #: does, for a conversation that only grows); None: encoded from `messages` when needed.
    encoded: Sequence[bytes | None] | None = None
    #: The most tokens the answer may have (the provider's max_tokens, which LiteLLM maps per
    #: provider); None: not sent, the request is as it would be without a token budget.
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextPart:
    """A chunk of the model's text."""

    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """One complete tool call; `raw` is the arguments string as the model sent it."""

    id: str
    name: str
    args: dict[str, Any]
    raw: str
    kind: Literal["tool-call"] = "tool-call"


@dataclass(frozen=True, slots=True)
class FinishPart:
    """End of the stream: mapped finish reason and usage."""

    reason: str
    usage: Usage
    kind: Literal["finish"] = "finish"


ModelDelta = TextPart | ToolCallPart | FinishPart

_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "tool_use": "tool-calls",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content-filter",
}


def finish_part(has_calls: bool, raw_reason: str | None, usage: Usage | None) -> FinishPart:
    """The mapped finish reason: tool calls win over whatever the provider said."""
    if has_calls:
        reason = "tool-calls"
    else:
        reason = _FINISH_REASONS.get(str(raw_reason), "other") if raw_reason else "stop"
    return FinishPart(reason, usage or Usage())


def parse_args(raw: str) -> dict[str, Any]:
    """Tool-call arguments as a dict; text that is not a JSON object (or nested past Python's
    recursion limit) is kept as `{"_raw": …}`. A lone surrogate escape (`"\\ud800"`: valid JSON,
    not encodable text) becomes U+FFFD, so the call can be saved, published and sent back."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {"_raw": raw}
    if not isinstance(value, dict):
        return {"_raw": raw}
    if "\\u" in raw:  # only escapes can make a surrogate (the text itself is decoded UTF-8)
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            return cast(dict[str, Any], json.loads(without_surrogates(json.dumps(value, ensure_ascii=False))))
    return value


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
