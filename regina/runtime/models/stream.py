"""Accumulating streamed chunks into tagged deltas: text as it comes, then tool calls and finish.

Chunks are LiteLLM `ModelResponseStream` objects, or `GenericStreamingChunk` dicts that some of
LiteLLM's parsers emit at the end of a stream. Streamed tool-call argument fragments are joined
per call.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from regina.runtime.events import Usage
from regina.runtime.messages import utf8_safe
from regina.runtime.models.parts import ModelDelta, TextPart, ToolCallPart, finish_part, parse_args

__all__ = ["StreamAcc", "token_counts", "usage_of", "new_call_id"]


def new_call_id() -> str:
    """A tool-call id for a provider that sent none."""
    return f"call_{uuid.uuid4().hex[:24]}"


def token_counts(usage: Any) -> tuple[Any, Any]:
    """(prompt_tokens, completion_tokens) of a usage object or dict; None where absent."""
    if isinstance(usage, dict):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


def usage_of(obj: Any) -> Usage | None:
    """The Usage of a non-streamed response, or None when it reports none."""
    usage = getattr(obj, "usage", None)
    if usage is None:
        return None
    prompt, completion = token_counts(usage)
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))


@dataclass(slots=True)
class _CallAcc:
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)

    def done(self) -> ToolCallPart:
        raw = "".join(self.parts)
        return ToolCallPart(id=self.id or new_call_id(), name=self.name, args=parse_args(raw), raw=raw)


class _ToolCalls:
    """Accumulates streamed tool-call fragments keyed by index (a new id at a used index, as
    some providers send, starts a new call)."""

    def __init__(self) -> None:
        self.calls: list[_CallAcc] = []
        self.by_index: dict[int, _CallAcc] = {}

    def add(self, frag: Any) -> None:
        index = getattr(frag, "index", None)
        index = len(self.calls) if index is None else int(index)
        fid = getattr(frag, "id", None) or ""
        acc = self.by_index.get(index)
        if acc is None or (fid and acc.id and fid != acc.id):
            acc = _CallAcc()
            self.calls.append(acc)
            self.by_index[index] = acc
        if fid and not acc.id:
            acc.id = fid
        fn = getattr(frag, "function", None)
        if fn is not None:
            if getattr(fn, "name", None):
                acc.name = fn.name
            if getattr(fn, "arguments", None):
                acc.parts.append(fn.arguments)


class StreamAcc:
    """Turns streamed chunks into TextParts as they come, then tool calls and the finish.

    Usage may arrive in parts (Anthropic sends input tokens first and output tokens last): the
    largest count seen of each wins.
    """

    def __init__(self) -> None:
        self.calls = _ToolCalls()
        self.prompt: int | None = None
        self.completion: int | None = None
        self.raw_reason: str | None = None
        self._high = ""  # a high surrogate ending the last text: its pair may start the next one

    def _text(self, text: str) -> Iterator[ModelDelta]:
        """A TextPart of `text` without lone surrogates (`utf8_safe`); a pair split across two
        chunks is joined, not replaced."""
        if self._high:
            text, self._high = self._high + text, ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        if text:
            yield TextPart(utf8_safe(text))

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        prompt, completion = token_counts(usage)
        if prompt is not None:
            self.prompt = max(self.prompt or 0, int(prompt))
        if completion is not None:
            self.completion = max(self.completion or 0, int(completion))

    def feed(self, chunk: Any) -> Iterator[ModelDelta]:
        """The TextParts of one chunk (tool-call fragments and the finish reason are kept)."""
        if isinstance(chunk, dict):  # GenericStreamingChunk
            self._usage(chunk.get("usage"))
            if chunk.get("text"):
                yield from self._text(str(chunk["text"]))
            tool_use = chunk.get("tool_use")
            if tool_use:
                self.calls.add(_frag(tool_use))
            if chunk.get("finish_reason") and self.raw_reason is None:
                self.raw_reason = str(chunk["finish_reason"])
            return
        self._usage(getattr(chunk, "usage", None))
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is not None:
                text = delta.content
                if text:
                    yield from self._text(text)
                for frag in delta.tool_calls or ():
                    self.calls.add(frag)
            if choice.finish_reason:
                self.raw_reason = choice.finish_reason

    def end(self) -> Iterator[ModelDelta]:
        """The complete tool calls, then the FinishPart."""
        if self._high:  # a high surrogate the stream never paired
            yield TextPart(utf8_safe(self._high))
            self._high = ""
        for acc in self.calls.calls:
            yield acc.done()
        usage = None
        if self.prompt is not None or self.completion is not None:
            usage = Usage(prompt_tokens=self.prompt or 0, completion_tokens=self.completion or 0)
        yield finish_part(bool(self.calls.calls), self.raw_reason, usage)


def _frag(raw: dict[str, Any]) -> SimpleNamespace:
    """A tool-call fragment given as a dict, with the attributes `_ToolCalls.add` reads."""
    fn = raw.get("function") or {}
    return SimpleNamespace(
        index=raw.get("index"),
        id=raw.get("id"),
        function=SimpleNamespace(name=fn.get("name"), arguments=fn.get("arguments")),
    )
