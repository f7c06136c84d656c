"""Model calls through LiteLLM's provider transforms, without `litellm.completion`'s wrapper.

`litellm.completion` wraps each call in per-call machinery Regina does not use (it runs no
callbacks): a logging object, parameter resolution over every provider, a cost calculation on
the response, and a success handler that builds a standard logging payload on a background
thread. On this 2-core machine that is 2.5–4 ms of CPU per call over the HTTP request itself
(`python -m benchmarks.bench_chat`, docs/benchmarks.md); streamed calls cost more, in
LiteLLM's per-chunk stream wrapper.

For the two wire formats Regina names (OpenAI chat completions and Anthropic messages) this
module uses LiteLLM's own pieces for everything provider-specific, the ones its HTTP handler
uses: the provider config (`map_openai_params`, `validate_environment`, `get_complete_url`,
`transform_request`, `get_error_class`), its streaming chunk parsers, and LiteLLM's module-level
HTTP client. Every call streams, so one parser serves sync and streamed chats. Any other
provider (the Vercel gateway, the offline demo model, any LiteLLM provider), and models LiteLLM
serves through OpenAI's Responses API (o1-pro, o3-pro, `responses/…`), have no route here and
go through `litellm.completion` as before.
"""

from __future__ import annotations

import copy
import functools
import json
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from regina.providers import ModelTarget
from regina.runtime.messages import goes_out_as_is
from regina.runtime.models import wire
from regina.runtime.models.errors import provider_errors
from regina.runtime.models.parts import ModelDelta, ModelRequest
from regina.runtime.models.setup import get_litellm
from regina.runtime.models.stream import StreamAcc

__all__ = ["Route", "route_for", "request_body", "stream", "stream_chunks", "DIRECT_PROVIDERS"]

#: LiteLLM provider names served here; everything else goes through `litellm.completion`.
DIRECT_PROVIDERS = ("openai", "anthropic")

_DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


@dataclass(frozen=True)
class Route:
    """Where and how one model target is called: provider, model name, endpoint, LiteLLM config."""

    provider: str
    model: str
    api_base: str
    api_key: str | None
    config: Any


@functools.lru_cache(maxsize=256)
def _route(litellm_model: str, api_base: str | None, api_key: str | None) -> Route | None:
    litellm = get_litellm()
    try:
        model, provider, _key, _base = litellm.get_llm_provider(litellm_model, api_base=api_base)
    except Exception:  # unknown to LiteLLM: let litellm.completion report it
        return None
    if provider not in DIRECT_PROVIDERS or _responses_only(litellm, model, provider):
        return None
    config = litellm.ProviderConfigManager.get_provider_chat_config(
        model=model, provider=litellm.LlmProviders(provider)
    )
    if config is None:
        return None
    base = (api_base or _DEFAULT_BASE[provider]).rstrip("/")
    if provider == "anthropic" and not base.endswith("/v1/messages"):
        base += "/v1/messages"  # as litellm.completion does for Anthropic endpoints
    return Route(provider, model, base, api_key, config)


def _responses_only(litellm: Any, model: str, provider: str) -> bool:
    """True for models LiteLLM serves through OpenAI's Responses API (not chat completions)."""
    try:
        info, _ = litellm.main.responses_api_bridge_check(model=model, custom_llm_provider=provider)
    except Exception:  # no verdict: leave the call to litellm.completion
        return True
    return bool(info.get("mode") == "responses")


def route_for(target: ModelTarget) -> Route | None:
    """The direct route for a target, or None when `litellm.completion` must make the call."""
    return _route(target.litellm_model, target.api_base, target.api_key)


def joins_encoded_messages(target: ModelTarget) -> bool:
    """Whether a call for `target` sends the messages as the JSON in `ModelRequest.encoded`
    (see `_plain_openai_messages`): only then is keeping each message's JSON worth its memory."""
    route = route_for(target)
    return route is not None and _splices_messages(route.config)


def _splices_messages(config: Any) -> bool:
    """LiteLLM's plain OpenAI config, not set to move system messages first: it would send
    text messages as they are (the o-series, GPT-5 and other configs rewrite them their ways)."""
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig

    return type(config) is OpenAIGPTConfig and not get_litellm().openai_system_messages_first


def _iterator(route: Route, lines: Iterator[str], litellm_params: dict[str, Any]) -> Iterator[Any]:
    if route.provider == "anthropic":
        from litellm.llms.anthropic.chat.handler import ModelResponseIterator
        from litellm.llms.anthropic.chat.transformation import ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY

        return iter(
            ModelResponseIterator(
                streaming_response=lines,
                sync_stream=True,
                json_mode=False,
                tool_name_reverse_map=litellm_params.get(ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY),
            )
        )
    handler = route.config.get_model_response_iterator(streaming_response=lines, sync_stream=True, json_mode=False)
    from regina.runtime.models.openai_chunks import HANDLER, LeanOpenAIStream

    if type(handler) is HANDLER:  # plain chunks instead of pydantic ones (openai_chunks.py)
        handler = LeanOpenAIStream(streaming_response=lines, sync_stream=True, json_mode=False)
    return iter(handler)


def stream(route: Route, request: ModelRequest) -> Iterator[ModelDelta]:
    """One streamed call on the direct route as TextPart… ToolCallPart… FinishPart."""
    acc = StreamAcc()
    with provider_errors():
        for chunk in stream_chunks(route, request):
            yield from acc.feed(chunk)
    yield from acc.end()


def stream_chunks(route: Route, request: ModelRequest) -> Iterator[Any]:
    """POST one streamed request and yield LiteLLM's parsed chunks (`ModelResponseStream`
    objects, or `GenericStreamingChunk` dicts at the end of some streams).

    Raises LiteLLM's provider exceptions (`status_code`, `message`) for HTTP errors and errors
    inside the stream; `stream` turns them into `ModelError`. The HTTP response is always
    read to its end or closed before this returns, so the connection goes back to the pool.
    """
    litellm = get_litellm()
    config = route.config
    url, headers, body, litellm_params = request_body(route, request)
    lines: Any = wire.post_lines(url, body, headers, request.timeout, config)
    if lines is None:  # a proxy, HTTP/2, a redirect…: LiteLLM's httpx client makes the call
        lines = _httpx_lines(litellm, config, url, body, headers, request.timeout)
    try:
        yield from _iterator(route, lines, litellm_params)
        for _ in lines:  # past the parser's last event (Anthropic stops at message_stop)
            pass
    finally:
        # Close deterministically: a suspended line generator finalized later by the cyclic GC
        # can close httpcore's pool stream inside another pool operation and deadlock it.
        lines.close()


#: Stand for the tool schemas and the messages in the request dict while it is dumped
#: (`request_body`); random per process, so no message can spell them.
_TOOLS_MARK = f"\x00regina-tools-{secrets.token_hex(16)}\x00"
_MESSAGES_MARK = f"\x00regina-messages-{secrets.token_hex(16)}\x00"


def _plain_openai_tools(config: Any, optional: dict[str, Any]) -> str | None:
    """The tool schemas as JSON when LiteLLM's OpenAI transform would send them unchanged: its
    `transform_request` walks every tool (recursively) to strip `cache_control` keys, which a
    tool whose JSON has no such key cannot have; the walk cost more than the rest of the request
    (≈ 0.1–0.25 ms with eight tools). Only for `OpenAIGPTConfig` itself (the o-series, GPT-5 and
    other configs transform tools their own ways) and without a `tool_choice` (dropped there
    when no tools are given). None: let the transform see the tools."""
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig

    tools = optional.get("tools")
    if type(config) is not OpenAIGPTConfig or not tools or "tool_choice" in optional:
        return None
    dumped = json.dumps(tools)
    return None if '"cache_control"' in dumped else dumped


def _plain_openai_messages(config: Any, request: ModelRequest) -> bytes | None:
    """The messages as JSON when LiteLLM's OpenAI transform would send them unchanged, as
    `_plain_openai_tools` does for tools. The transform walks the whole conversation on every
    call (every message, recursively, for `cache_control` keys; tool messages for images and
    tool references; user messages' content parts), so a step's request cost grew with the
    transcript. Messages whose content is text (or none) have no parts to rewrite, and a
    conversation with no `cache_control` key has none to strip: then the messages go out as
    they are (`messages.goes_out_as_is`). A caller that keeps each message's JSON
    (`request.encoded`, the loop's) had each encoded and checked once, as it joined the
    conversation; otherwise the whole list is, here. Only for `OpenAIGPTConfig` itself, and not
    when LiteLLM is set to move system messages first. The text is orjson's (compact, UTF-8 as
    it is), the rest of the body json's as LiteLLM dumps it: the same JSON value. None: let the
    transform see the messages."""
    if not _splices_messages(config):
        return None
    encoded = request.encoded
    if encoded is not None and len(encoded) == len(request.messages):
        try:
            return b"[" + b",".join(encoded) + b"]"  # type: ignore[arg-type]  # a None: TypeError
        except TypeError:  # a message the transform must see
            return None
    try:
        dumped = orjson.dumps(list(request.messages))  # ≈ 8x json's (benchmarks/bench_model_body.py)
    except TypeError:  # not plain JSON data: json's errors, from the transform's own dump
        return None
    return dumped if goes_out_as_is(dumped) else None


def request_body(route: Route, request: ModelRequest) -> tuple[str, dict[str, str], bytes, dict[str, Any]]:
    """(url, headers, JSON body, LiteLLM's params) of one streamed request, as LiteLLM builds
    them; tool schemas and messages the transform would leave as they are skip its walk and
    are spliced into the body's JSON (the same bytes, see `_plain_openai_tools` and
    `_plain_openai_messages`).

    When the messages are spliced, nothing LiteLLM builds depends on them: the URL, headers and
    the body around the messages come from `_plain_frame`, built once per model, tool schemas
    and temperature (an agent's tools stay the same from step to step) — unless the request
    carries `max_tokens`."""
    msgs = list(request.messages)
    messages_json = _plain_openai_messages(route.config, request)
    # A capped request (a token budget's max_tokens, different at every step) is built whole,
    # its messages still spliced: cached frames would be one per cap, none used twice.
    if messages_json is not None and request.max_tokens is None:
        try:
            tools_key = orjson.dumps(list(request.tools)) if request.tools else b""
        except TypeError:  # not plain JSON data: the transform's own dump reports it
            tools_key = b'"cache_control"'
        if b'"cache_control"' not in tools_key:
            url, headers, head, tail, params = _plain_frame(route, tools_key, request.temperature)
            return url, dict(headers), b"".join((head, messages_json, tail)), dict(params)
    return _built_body(route, request, msgs, None if messages_json is None else messages_json.decode())


@functools.lru_cache(maxsize=256)
def _plain_frame(
    route: Route, tools_key: bytes, temperature: float | None
) -> tuple[str, tuple[tuple[str, str], ...], bytes, bytes, tuple[tuple[str, Any], ...]]:
    """(url, headers, the body's JSON before the messages and after them, LiteLLM's params) of
    a request whose messages go out as they are: `_built_body`'s, split at the messages."""
    tools = orjson.loads(tools_key) if tools_key else None
    url, headers, body, params = _built_body(route, ModelRequest([], tools, temperature), [], _MESSAGES_MARK)
    head, mark, tail = body.decode().partition(_MESSAGES_MARK)
    if not mark:  # cannot happen: the mark goes where the messages go
        raise RuntimeError("the request body has no place for the messages")
    return url, tuple(headers.items()), head.encode(), tail.encode(), tuple(params.items())


def _built_body(
    route: Route, request: ModelRequest, msgs: list[Any], messages_json: str | None
) -> tuple[str, dict[str, str], bytes, dict[str, Any]]:
    """`request_body`'s result built with LiteLLM's provider config (`messages_json`: the
    messages' JSON to splice, or None to let the transform see them)."""
    config = route.config
    params: dict[str, Any] = {"stream": True}
    if route.provider == "openai":
        params["stream_options"] = {"include_usage": True}
    if request.tools:
        params["tools"] = copy.deepcopy(list(request.tools))  # the loop's are shared (Tool.shared_schema)
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens  # mapped per provider (max_completion_tokens…)
    optional = config.map_openai_params(
        non_default_params=params, optional_params={}, model=route.model, drop_params=True
    )
    litellm_params: dict[str, Any] = {}
    headers = config.validate_environment(
        headers={},
        model=route.model,
        messages=msgs,
        optional_params=optional,
        litellm_params=litellm_params,
        api_key=route.api_key,
        api_base=route.api_base,
    )
    url = config.get_complete_url(
        api_base=route.api_base,
        api_key=route.api_key,
        model=route.model,
        optional_params=optional,
        litellm_params=litellm_params,
        stream=True,
    )
    tools_json = _plain_openai_tools(config, optional)
    order = list(optional)
    if tools_json is not None:
        optional.pop("tools")
    data = config.transform_request(
        model=route.model,
        # Copies: a transform may edit a message in place (Session.model_view keeps them).
        messages=[] if messages_json is not None else [dict(m) for m in msgs],
        optional_params=optional,
        litellm_params=litellm_params,
        headers=headers,
    )
    if messages_json is not None:
        data["messages"] = _MESSAGES_MARK  # the key keeps its place
    if tools_json is not None:
        # Back where the transform's `{"model", "messages", **optional_params}` had it.
        at = order.index("tools")
        after = next((k for k in reversed(order[:at]) if k in data), "messages")
        rebuilt: dict[str, Any] = {}
        for key, value in data.items():
            rebuilt[key] = value
            if key == after:
                rebuilt["tools"] = _TOOLS_MARK
        data = rebuilt
    data["stream"] = True
    body = json.dumps(data)
    if messages_json is not None:
        head, _mark, tail = body.partition(json.dumps(_MESSAGES_MARK))
        body = head + messages_json + tail
    if tools_json is not None:
        head, _mark, tail = body.rpartition(json.dumps(_TOOLS_MARK))
        body = head + tools_json + tail
    return url, headers, body.encode(), litellm_params


class _HttpxLines:
    """`httpx.Response.iter_lines()` with a `close()` that closes the response too."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._it: Generator[str, None, None] = response.iter_lines()  # type: ignore[assignment]

    def __iter__(self) -> Generator[str, None, None]:
        return self._it

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        self._response.close()


def _httpx_lines(
    litellm: Any, config: Any, url: str, body: bytes, headers: dict[str, str], timeout: float | None
) -> _HttpxLines:
    try:
        response = litellm.module_level_client.post(url, data=body, headers=headers, stream=True, timeout=timeout)
    except httpx.HTTPStatusError as exc:  # LiteLLM's handler has read and masked the error body
        body_text = str(getattr(exc, "message", "") or exc)
        raise config.get_error_class(
            error_message=body_text, status_code=exc.response.status_code, headers=exc.response.headers
        ) from exc
    return _HttpxLines(response)
