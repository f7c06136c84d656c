"""OpenAI chat-completion stream chunks as plain objects instead of LiteLLM's pydantic ones.

LiteLLM's `OpenAIChatCompletionStreamingHandler` builds a `ModelResponseStream` (pydantic:
choices, `Delta`, tool-call models) for every SSE event; that construction was the largest part
of parsing a streamed reply (≈ 4 % of a worker's busy samples for a short chat, more per chunk
for a long reply). `StreamAcc` reads five attributes of a chunk, so here a chunk is a
`SimpleNamespace` with exactly those, filled the way LiteLLM fills them: the finish reason
through `map_finish_reason`, a tool call without an index numbered by its place in the chunk,
an error event raised as LiteLLM's `OpenAIError`. The SSE lines themselves are read the way
LiteLLM's iterator reads them (empty lines skipped, the `data:` prefix stripped by LiteLLM's own
helper, `[DONE]` ends the stream, a line that is not JSON is an empty chunk), with orjson for the
JSON and without its per-line layers of calls: together ≈ a third of a short reply's parsing.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import orjson
from litellm.litellm_core_utils.core_helpers import map_finish_reason
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper
from litellm.llms.openai.chat.gpt_transformation import OpenAIChatCompletionStreamingHandler
from litellm.llms.openai.common_utils import OpenAIError

__all__ = ["LeanOpenAIStream", "HANDLER"]

#: The handler class whose chunks this one replaces (swapped only for exactly this class).
HANDLER = OpenAIChatCompletionStreamingHandler

_NO_DELTA = SimpleNamespace(content=None, tool_calls=None)


def _tool_calls(raw: Any) -> list[SimpleNamespace] | None:
    if not isinstance(raw, list | tuple):
        return None
    out = []
    position = 0
    for call in raw:
        if not isinstance(call, dict):
            continue
        index = call.get("index")
        if index is None:  # as LiteLLM's Delta numbers them
            index, position = position, position + 1
        fn = call.get("function") or {}
        out.append(
            SimpleNamespace(
                index=index,
                id=call.get("id"),
                function=SimpleNamespace(name=fn.get("name"), arguments=fn.get("arguments")),
            )
        )
    return out


def _choice(raw: dict[str, Any]) -> SimpleNamespace:
    delta = raw.get("delta")
    reason = raw.get("finish_reason")
    return SimpleNamespace(
        delta=SimpleNamespace(content=delta.get("content"), tool_calls=_tool_calls(delta.get("tool_calls")))
        if isinstance(delta, dict)
        else _NO_DELTA,
        finish_reason=map_finish_reason(reason) if reason else None,
    )


class LeanOpenAIStream(OpenAIChatCompletionStreamingHandler):
    """LiteLLM's OpenAI stream handler with chunks as `SimpleNamespace(usage, choices)`."""

    def chunk_parser(self, chunk: dict[str, Any]) -> Any:
        error = self._extract_error_from_chunk(chunk)
        if error is not None:
            raise OpenAIError(status_code=error[1], message=error[0])
        choices = chunk.get("choices") or ()
        return SimpleNamespace(usage=chunk.get("usage"), choices=[_choice(c) for c in choices if isinstance(c, dict)])

    def __next__(self) -> Any:
        # LiteLLM's BaseModelResponseIterator.__next__ for text lines (the direct route's).
        for line in self.response_iterator:
            if not line or line.isspace():
                continue  # the blank lines between SSE events
            try:
                return self._handle_string_chunk(line)
            except ValueError as exc:
                raise RuntimeError(f"Error parsing chunk: {exc},\nReceived chunk: {line}") from exc
        raise StopIteration

    def _handle_string_chunk(self, str_line: str) -> Any:
        payload = CustomStreamWrapper.strip_sse_data_from_chunk(str_line)
        # The end marker is a line of its own. LiteLLM takes "[DONE]" anywhere in the line for
        # it: a delta whose text or tool arguments held it was dropped (a file written short).
        if payload is not None and payload.strip() == "[DONE]":
            return _chunk(finished=True)
        parsed = _json(payload) if payload is not None else None
        return self.chunk_parser(chunk=parsed) if parsed else _chunk(finished=False)


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # what json reads and orjson refuses (NaN, integers past 64 bits)
            return json.loads(text)
        except json.JSONDecodeError:
            return None  # not JSON: an empty chunk, as LiteLLM's parser makes it


def _chunk(finished: bool) -> dict[str, Any]:
    """LiteLLM's `GenericStreamingChunk` for `[DONE]` (finished) and for a line that is not JSON."""
    return {
        "text": "",
        "is_finished": finished,
        "finish_reason": "stop" if finished else "",
        "usage": None,
        "index": 0,
        "tool_use": None,
    }
