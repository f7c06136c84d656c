"""The one module that knows LiteLLM's shapes.

`stream_completion` turns a LiteLLM stream into a few small tagged deltas:

- `TextPart(text)`                    a chunk of the model's text;
- `ToolCallPart(id, name, args, raw)` one complete tool call (streamed argument fragments are
  accumulated; arguments that are not a JSON object become `{"_raw": "<text>"}` so the tool
  reports the problem to the model instead of the run failing);
- `FinishPart(reason, usage)`         last: `stop` · `tool-calls` · `length` · `content-filter`
  · `other`, with the usage of the stream's usage chunk.

`complete` is the non-streaming call used for compaction summaries. Every LiteLLM failure
(including one in the middle of a stream) becomes a `ModelError` with a readable message such as
``model provider error: 500 upstream exploded``.

OpenAI- and Anthropic-format providers are called through LiteLLM's provider layer without
`litellm.completion`'s per-call wrapper (regina/runtime/provider_http.py); every other provider
goes through `litellm.completion`. LiteLLM is imported lazily (it costs seconds) and configured
once for low per-call overhead: no callbacks, no telemetry, no message logging, no cost
calculation, no retries (a retry in the middle of a stream would duplicate deltas the client
already saw).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

from regina.errors import ModelError
from regina.providers import ModelTarget
from regina.runtime.events import Usage
from regina.runtime.provider_http import Route, route_for, stream_chunks

__all__ = [
    "TextPart",
    "ToolCallPart",
    "FinishPart",
    "ModelDelta",
    "stream_completion",
    "complete",
    "get_litellm",
]

log = logging.getLogger(__name__)


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

_litellm: Any = None
_litellm_lock = threading.Lock()


def get_litellm() -> Any:
    """Import and configure LiteLLM once (thread-safe); later calls return the module."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _litellm_lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_LOG", "ERROR")
            # LiteLLM's own httpx handler for the OpenAI route instead of the OpenAI SDK, whose
            # request transform costs ~0.18 ms of CPU per history message (23 ms at 100 messages,
            # 4.4 ms with this handler; docs/benchmarks.md). Set it to "false" to use the SDK.
            os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")
            import litellm

            _configure(litellm)
            _litellm = litellm
    return _litellm


def _configure(litellm: Any) -> None:
    litellm.drop_params = True
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    litellm.turn_off_message_logging = True
    litellm.disable_streaming_logging = True
    litellm.logging = False
    litellm.include_cost_in_streaming_usage = False
    litellm.disable_end_user_cost_tracking = True
    litellm.disable_token_counter = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    litellm.input_callback = []
    litellm._async_success_callback = []
    litellm._async_failure_callback = []
    litellm.num_retries = 0
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _request_kwargs(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    temperature: float | None,
    timeout: float | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": target.litellm_model,
        "messages": messages,
        "timeout": timeout,
        "max_retries": 0,
        "num_retries": 0,
    }
    if tools:
        kwargs["tools"] = list(tools)
    if temperature is not None:
        kwargs["temperature"] = temperature
    if target.api_key:
        kwargs["api_key"] = target.api_key
    if target.api_base:
        kwargs["api_base"] = target.api_base
    return kwargs


_PREFIX = re.compile(r"^\s*(?:litellm\.\w+:|\w+Error:|\w+Exception\s*-)\s*")
_HANDLE_WITH = re.compile(r"\.?\s*Handle with `litellm\.\w+`\.?\s*$")
_BYTES = re.compile(r"^b(['\"])(.*)\1$", re.S)


def _clean_message(message: str) -> str:
    """Strip LiteLLM's wrapping ("litellm.X: XError: OpenAIException - …", b'…', "Handle with …")
    and pull `error.message` out of a JSON error body."""
    message = _HANDLE_WITH.sub("", message.strip())
    while True:
        stripped = _PREFIX.sub("", message, count=1)
        if stripped == message:
            break
        message = stripped
    bytes_repr = _BYTES.match(message)
    if bytes_repr:
        message = bytes_repr.group(2)
    try:  # provider bodies are often JSON: {"error": {"message": "..."}}
        body = json.loads(message)
    except ValueError:
        return message
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    return message


def _model_error(exc: BaseException) -> ModelError:
    """A readable ModelError: `model provider error: <status> <message>`."""
    if isinstance(exc, ModelError):
        return exc
    status = getattr(exc, "status_code", None)
    message = _clean_message(str(getattr(exc, "message", None) or exc or ""))
    if len(message) > 500:
        message = message[:500] + "…"
    head = f"{status} " if isinstance(status, int) else ""
    err = ModelError(f"model provider error: {head}{message or type(exc).__name__}")
    err.__cause__ = exc
    return err


def _token_counts(usage: Any) -> tuple[Any, Any]:
    """(prompt_tokens, completion_tokens) of a usage object or dict; None where absent."""
    if isinstance(usage, dict):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    return getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)


def _usage_of(obj: Any) -> Usage | None:
    usage = getattr(obj, "usage", None)
    if usage is None:
        return None
    prompt, completion = _token_counts(usage)
    if prompt is None and completion is None:
        return None
    return Usage(prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0))


def _parse_args(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


@dataclass(slots=True)
class _CallAcc:
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)

    def done(self) -> ToolCallPart:
        raw = "".join(self.parts)
        return ToolCallPart(
            id=self.id or f"call_{uuid.uuid4().hex[:24]}", name=self.name, args=_parse_args(raw), raw=raw
        )


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


def _release(stream: Any, drain: bool) -> None:
    """Close the HTTP response under a LiteLLM stream deterministically.

    LiteLLM's Anthropic iterator stops at `message_stop` and leaves httpx's line generator
    suspended. Collected later by the cyclic GC, that generator closes httpcore's pool stream
    from inside whatever pool operation is running at that moment, and the pool's
    non-reentrant lock deadlocks the thread (seen here in about one run of four). So: finish
    reading a completed stream (the connection goes back to the pool), then close the response
    explicitly, which makes any later finalizer a no-op.
    """
    inner = getattr(stream, "completion_stream", None)
    lines: Any = getattr(inner, "streaming_response", None)
    frame = getattr(lines, "gi_frame", None)
    if frame is not None:
        response = frame.f_locals.get("self")
        try:
            if drain:
                for _ in lines:
                    pass
        except Exception:  # noqa: BLE001 - the answer is complete; only cleanup failed
            log.debug("draining a finished model stream failed", exc_info=True)
        finally:
            close = getattr(response, "close", None)
            if callable(close):
                close()
    close_inner = getattr(inner, "close", None)  # openai.Stream and similar
    if callable(close_inner):
        try:
            close_inner()
        except Exception:  # noqa: BLE001
            log.debug("closing a model stream failed", exc_info=True)


def _finish(has_calls: bool, raw_reason: str | None, usage: Usage | None) -> FinishPart:
    """The mapped finish reason: tool calls win over whatever the provider said."""
    if has_calls:
        reason = "tool-calls"
    else:
        reason = _FINISH_REASONS.get(str(raw_reason), "other") if raw_reason else "stop"
    return FinishPart(reason, usage or Usage())


def stream_completion(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    temperature: float | None = None,
    timeout: float | None = 600.0,
) -> Iterator[ModelDelta]:
    """Stream one model call as TextPart… ToolCallPart… FinishPart.

    Raises:
        ModelError: the provider failed, before or during the stream.
    """
    route = route_for(target)
    if route is not None:
        yield from _direct(route, messages, tools, temperature, timeout)
        return
    litellm = get_litellm()
    kwargs = _request_kwargs(target, messages, tools, temperature, timeout)
    acc = _StreamAcc()
    stream: Any = None
    finished = False
    try:
        stream = litellm.completion(stream=True, stream_options={"include_usage": True}, **kwargs)
        for chunk in stream:
            yield from acc.feed(chunk)
        finished = True
    except ModelError:
        raise
    except Exception as exc:
        raise _model_error(exc) from exc
    finally:
        if stream is not None:
            _release(stream, drain=finished)
    yield from acc.end()


def _direct(
    route: Route,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    temperature: float | None,
    timeout: float | None,
) -> Iterator[ModelDelta]:
    """One call through LiteLLM's provider transforms (regina/runtime/provider_http.py)."""
    acc = _StreamAcc()
    try:
        for chunk in stream_chunks(route, messages, tools, temperature, timeout):
            yield from acc.feed(chunk)
    except ModelError:
        raise
    except Exception as exc:
        raise _model_error(exc) from exc
    yield from acc.end()


class _StreamAcc:
    """Turns streamed chunks into TextParts as they come, then tool calls and the finish.

    Chunks are LiteLLM `ModelResponseStream` objects, or `GenericStreamingChunk` dicts that some
    of LiteLLM's parsers emit at the end of a stream. Usage may arrive in parts (Anthropic sends
    input tokens first and output tokens last): the largest count seen of each wins.
    """

    def __init__(self) -> None:
        self.calls = _ToolCalls()
        self.prompt: int | None = None
        self.completion: int | None = None
        self.raw_reason: str | None = None

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        prompt, completion = _token_counts(usage)
        if prompt is not None:
            self.prompt = max(self.prompt or 0, int(prompt))
        if completion is not None:
            self.completion = max(self.completion or 0, int(completion))

    def feed(self, chunk: Any) -> Iterator[ModelDelta]:
        if isinstance(chunk, dict):  # GenericStreamingChunk
            self._usage(chunk.get("usage"))
            if chunk.get("text"):
                yield TextPart(str(chunk["text"]))
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
                    yield TextPart(text)
                for frag in delta.tool_calls or ():
                    self.calls.add(frag)
            if choice.finish_reason:
                self.raw_reason = choice.finish_reason

    def end(self) -> Iterator[ModelDelta]:
        for acc in self.calls.calls:
            yield acc.done()
        usage = None
        if self.prompt is not None or self.completion is not None:
            usage = Usage(prompt_tokens=self.prompt or 0, completion_tokens=self.completion or 0)
        yield _finish(bool(self.calls.calls), self.raw_reason, usage)


def _frag(raw: dict[str, Any]) -> SimpleNamespace:
    """A tool-call fragment given as a dict, with the attributes `_ToolCalls.add` reads."""
    fn = raw.get("function") or {}
    return SimpleNamespace(
        index=raw.get("index"),
        id=raw.get("id"),
        function=SimpleNamespace(name=fn.get("name"), arguments=fn.get("arguments")),
    )


def complete(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    temperature: float | None = None,
    timeout: float | None = 600.0,
) -> tuple[str, Usage]:
    """One non-streaming call without tools (compaction summaries): (text, usage).

    Raises:
        ModelError: the provider failed.
    """
    text, usage = "", Usage()
    for part in call_completion(target, messages, None, temperature, timeout):
        if isinstance(part, TextPart):
            text += part.text
        elif isinstance(part, FinishPart):
            usage = part.usage
    return text, usage


def call_completion(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    temperature: float | None = None,
    timeout: float | None = 600.0,
) -> Iterator[ModelDelta]:
    """One non-streamed model call, yielded as the same TextPart / ToolCallPart… / FinishPart.

    Used when nobody watches deltas (sync chat): LiteLLM's per-chunk stream wrapper costs
    several ms of CPU per call that a single response does not.

    Raises:
        ModelError: the provider failed.
    """
    route = route_for(target)
    if route is not None:  # the direct route always streams (its parser is cheap): one text part
        pending: list[str] = []
        for part in _direct(route, messages, tools, temperature, timeout):
            if isinstance(part, TextPart):
                pending.append(part.text)
                continue
            if pending:
                yield TextPart("".join(pending))
                pending = []
            yield part
        return
    litellm = get_litellm()
    try:
        resp = litellm.completion(**_request_kwargs(target, messages, tools, temperature, timeout))
    except Exception as exc:
        raise _model_error(exc) from exc
    choices = getattr(resp, "choices", None) or []
    message = choices[0].message if choices else None
    text = str(getattr(message, "content", None) or "") if message is not None else ""
    if text:
        yield TextPart(text)
    calls = list(getattr(message, "tool_calls", None) or ()) if message is not None else []
    for call in calls:
        fn = call.function
        raw = str(getattr(fn, "arguments", "") or "")
        yield ToolCallPart(
            id=str(getattr(call, "id", "") or f"call_{uuid.uuid4().hex[:24]}"),
            name=str(getattr(fn, "name", "") or ""),
            args=_parse_args(raw),
            raw=raw,
        )
    raw_reason = getattr(choices[0], "finish_reason", None) if choices else None
    yield _finish(bool(calls), raw_reason, _usage_of(resp))
