"""The three model calls the runtime makes, each routed to the direct route when one exists
(OpenAI and Anthropic formats, `direct.py`) and to `litellm.completion` otherwise."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from regina.providers import ModelTarget
from regina.runtime.events import Usage
from regina.runtime.models import direct as direct
from regina.runtime.models import litellm_route as litellm_route
from regina.runtime.models.parts import FinishPart, ModelDelta, ModelRequest, TextPart
from regina.runtime.models.setup import get_litellm

__all__ = ["stream_completion", "call_completion", "complete", "keeps_encoded_messages", "output_cap"]

#: The largest cap sent for a model LiteLLM has no output limit for: every chat model it maps
#: answers at least 4 096 tokens, and a larger max_tokens than a model allows is refused (400).
UNKNOWN_MODEL_OUTPUT_LIMIT = 4096


def keeps_encoded_messages(target: ModelTarget) -> bool:
    """Whether calls for `target` use each message's JSON when the caller keeps it
    (`ModelRequest.encoded`): the direct OpenAI route does, the others walk the messages. Only
    an optimisation: whatever fails here (LiteLLM's import, a provider lookup) says no, and the
    call itself reports it as before."""
    try:
        return direct.joins_encoded_messages(target)
    except Exception:
        return False


def output_cap(target: ModelTarget, tokens: int) -> int | None:
    """`tokens` as a call's max_tokens when it limits the answer: below the model's own output
    limit (LiteLLM's model map). None when the model could not answer more anyway: the request
    then stays as it is without a budget (a larger max_tokens than the model allows is refused)."""
    limit = _output_limit(target.litellm_model)
    return tokens if tokens < (limit or UNKNOWN_MODEL_OUTPUT_LIMIT) else None


@functools.lru_cache(maxsize=256)
def _output_limit(litellm_model: str) -> int | None:
    """The most tokens the model answers, per LiteLLM's model map (None: not known)."""
    try:
        info = get_litellm().get_model_info(model=litellm_model)
    except Exception:  # not mapped (a custom or new model)
        return None
    limit = info.get("max_output_tokens") or info.get("max_tokens")
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def stream_completion(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    temperature: float | None = None,
    timeout: float | None = 600.0,
    encoded: Sequence[bytes | None] | None = None,
    max_tokens: int | None = None,
) -> Iterator[ModelDelta]:
    """Stream one model call as TextPart… ToolCallPart… FinishPart; `max_tokens` caps the
    answer (see `output_cap`).

    Raises:
        ModelError: the provider failed, before or during the stream.
    """
    request = ModelRequest(messages, tools, temperature, timeout, encoded, max_tokens)
    route = direct.route_for(target)
    if route is not None:
        yield from direct.stream(route, request)
    else:
        yield from litellm_route.stream(target, request)


def call_completion(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    temperature: float | None = None,
    timeout: float | None = 600.0,
    encoded: Sequence[bytes | None] | None = None,
    max_tokens: int | None = None,
) -> Iterator[ModelDelta]:
    """One non-streamed model call, yielded as the same TextPart / ToolCallPart… / FinishPart.

    Used when nobody watches deltas (sync chat): LiteLLM's per-chunk stream wrapper costs
    several ms of CPU per call that a single response does not.

    Raises:
        ModelError: the provider failed.
    """
    request = ModelRequest(messages, tools, temperature, timeout, encoded, max_tokens)
    route = direct.route_for(target)
    if route is None:
        yield from litellm_route.call(target, request)
        return
    pending: list[str] = []  # the direct route always streams (its parser is cheap): one text part
    for part in direct.stream(route, request):
        if isinstance(part, TextPart):
            pending.append(part.text)
            continue
        if pending:
            yield TextPart("".join(pending))
            pending = []
        yield part


def complete(
    target: ModelTarget,
    messages: Sequence[dict[str, Any]],
    temperature: float | None = None,
    timeout: float | None = 600.0,
    max_tokens: int | None = None,
) -> tuple[str, Usage, str]:
    """One non-streaming call without tools (compaction summaries): (text, usage, finish reason).

    Raises:
        ModelError: the provider failed.
    """
    text, usage, reason = "", Usage(), "stop"
    for part in call_completion(target, messages, None, temperature, timeout, max_tokens=max_tokens):
        if isinstance(part, TextPart):
            text += part.text
        elif isinstance(part, FinishPart):
            usage, reason = part.usage, part.reason
    return text, usage, reason
