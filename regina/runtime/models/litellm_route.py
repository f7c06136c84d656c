"""Model calls through `litellm.completion`: every provider the direct route does not serve
(the Vercel gateway, the offline demo model, any LiteLLM provider, Responses-API models)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

from regina.providers import ModelTarget
from regina.runtime.models.errors import provider_errors
from regina.runtime.models.parts import ModelDelta, ModelRequest, TextPart, ToolCallPart, finish_part, parse_args
from regina.runtime.models.setup import get_litellm
from regina.runtime.models.stream import StreamAcc, new_call_id, usage_of

__all__ = ["stream", "call"]

log = logging.getLogger(__name__)


def _completion(litellm: Any, target: ModelTarget, request: ModelRequest, **extra: Any) -> Any:
    """`litellm.completion` for one target, no retries (the caller's errors are its own)."""
    kwargs: dict[str, Any] = {
        "model": target.litellm_model,
        # Copies: a provider transform may edit a message in place, and the session keeps the
        # model form of its messages from turn to turn (Session.model_view).
        "messages": [dict(m) for m in request.messages],
        "timeout": request.timeout,
        "max_retries": 0,
        "num_retries": 0,
        **extra,
    }
    if request.tools:
        kwargs["tools"] = copy.deepcopy(list(request.tools))  # the loop's are shared (Tool.shared_schema)
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if target.api_key:
        kwargs["api_key"] = target.api_key
    if target.api_base:
        kwargs["api_base"] = target.api_base
    return litellm.completion(**kwargs)


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


def stream(target: ModelTarget, request: ModelRequest) -> Iterator[ModelDelta]:
    """One streamed `litellm.completion` call as TextPart… ToolCallPart… FinishPart."""
    litellm = get_litellm()
    acc = StreamAcc()
    chunks: Any = None
    finished = False
    try:
        with provider_errors():
            chunks = _completion(litellm, target, request, stream=True, stream_options={"include_usage": True})
            for chunk in chunks:
                yield from acc.feed(chunk)
            finished = True
    finally:
        if chunks is not None:
            _release(chunks, drain=finished)
    yield from acc.end()


def call(target: ModelTarget, request: ModelRequest) -> Iterator[ModelDelta]:
    """One non-streamed `litellm.completion` call, yielded as the same parts."""
    litellm = get_litellm()
    with provider_errors():
        resp = _completion(litellm, target, request)
    choices = getattr(resp, "choices", None) or []
    message = choices[0].message if choices else None
    text = str(getattr(message, "content", None) or "") if message is not None else ""
    if text:
        yield TextPart(text)
    calls = list(getattr(message, "tool_calls", None) or ()) if message is not None else []
    for tool_call in calls:
        fn = tool_call.function
        raw = str(getattr(fn, "arguments", "") or "")
        yield ToolCallPart(
            id=str(getattr(tool_call, "id", "") or new_call_id()),
            name=str(getattr(fn, "name", "") or ""),
            args=parse_args(raw),
            raw=raw,
        )
    raw_reason = getattr(choices[0], "finish_reason", None) if choices else None
    yield finish_part(bool(calls), raw_reason, usage_of(resp))
