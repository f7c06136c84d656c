"""The direct route's request body: tool schemas spliced into the JSON are the bytes LiteLLM's
transform would have sent, spliced messages the same JSON (regina/runtime/models/direct.py,
`request_body`)."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from regina.providers import ModelTarget
from regina.runtime.models import direct
from regina.runtime.models.parts import ModelRequest

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": 'Does things – with ünïcode and "quotes"',
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "where"},
                    "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}},
                },
                "required": ["path"],
            },
        },
    }
    for i in range(4)
]
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "hi \x00regina-tools\x00 there"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "tool_0", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "done"},
    {"role": "user", "content": [{"type": "text", "text": "part", "cache_control": {"type": "ephemeral"}}]},
]


#: A transcript of text messages (the splice's case): tool calls, a tool result, no content,
#: non-ASCII text, text that spells the marks and `cache_control` inside a string.
PLAIN: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": 'hi \x00regina-messages\x00 ünïcode "quoted" \\ there'},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "tool_0", "arguments": '{"a": 1}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "tool_0", "content": '{"cache_control": "in a string"}'},
    {"role": "assistant", "content": 'done ✓ {"content":[1], "content":{}}'},
]


@pytest.fixture(autouse=True)
def _fresh_frames() -> None:
    direct._plain_frame.cache_clear()  # tests here spy on the transform a cached frame skips


def _route(model: str = "openai/gpt-4o") -> direct.Route:
    route = direct.route_for(ModelTarget("openai", model, "sk-test", "http://127.0.0.1:9/v1"))
    assert route is not None
    return route


def _bodies(
    monkeypatch: pytest.MonkeyPatch,
    route: direct.Route,
    tools: list[dict[str, Any]] | None,
    temperature: float | None,
    messages: list[dict[str, Any]] = MESSAGES,
) -> tuple[bytes, bytes]:
    spliced = direct.request_body(route, ModelRequest(copy.deepcopy(messages), copy.deepcopy(tools), temperature))[2]
    with monkeypatch.context() as m:
        m.setattr(direct, "_plain_openai_tools", lambda config, optional: None)
        m.setattr(direct, "_plain_openai_messages", lambda config, messages: None)
        walked = direct.request_body(route, ModelRequest(copy.deepcopy(messages), copy.deepcopy(tools), temperature))[2]
    return spliced, walked


@pytest.mark.parametrize("temperature", [None, 0.3])
@pytest.mark.parametrize("tools", [TOOLS, TOOLS[:1], None])
def test_spliced_tools_are_the_bytes_the_transform_sends(
    monkeypatch: pytest.MonkeyPatch, tools: list[dict[str, Any]] | None, temperature: float | None
) -> None:
    spliced, walked = _bodies(monkeypatch, _route(), tools, temperature)
    assert spliced == walked
    body = json.loads(spliced)
    assert body["messages"][1]["content"] == "hi \x00regina-tools\x00 there"
    assert "cache_control" not in json.dumps(body["messages"])  # the transform still strips messages
    if tools:
        assert body["tools"] == tools


def test_the_splice_skips_the_transforms_walk_over_the_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    route = _route()
    real = type(route.config).remove_cache_control_flag_from_messages_and_tools

    def spy(self: Any, model: str, messages: Any, tools: Any = None) -> Any:
        seen.append(tools)
        return real(self, model, messages, tools)

    monkeypatch.setattr(type(route.config), "remove_cache_control_flag_from_messages_and_tools", spy)
    direct.request_body(route, ModelRequest(copy.deepcopy(MESSAGES), copy.deepcopy(TOOLS), None))
    assert seen and all(not t for t in seen)


def test_a_tool_with_cache_control_goes_through_the_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    tools = copy.deepcopy(TOOLS)
    tools[1]["function"]["parameters"]["cache_control"] = {"type": "ephemeral"}
    spliced, walked = _bodies(monkeypatch, _route(), tools, None)
    assert spliced == walked
    assert "cache_control" not in spliced.decode()


@pytest.mark.parametrize("model", ["openai/o3-mini", "openai/gpt-5"])
def test_other_openai_configs_keep_their_own_tool_transform(monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    spliced, walked = _bodies(monkeypatch, _route(model), TOOLS, None)
    assert spliced == walked


@pytest.mark.parametrize("model", ["openai/gpt-4o", "openai/o3-mini", "openai/gpt-5"])
@pytest.mark.parametrize("tools", [TOOLS, None])
def test_spliced_messages_are_the_json_the_transform_sends(
    monkeypatch: pytest.MonkeyPatch, model: str, tools: list[dict[str, Any]] | None
) -> None:
    spliced, walked = _bodies(monkeypatch, _route(model), tools, 0.3, PLAIN)
    assert json.loads(spliced) == json.loads(walked)
    assert list(json.loads(spliced)) == list(json.loads(walked))  # keys in the same order
    if model == "openai/gpt-4o":  # the o-series config rewrites the system message its own way
        body = json.loads(spliced)
        assert body["messages"] == PLAIN
        # Outside the messages, the bytes LiteLLM's dump makes.
        rest = {key: (None if key == "messages" else value) for key, value in body.items()}
        assert spliced.replace(orjson.dumps(PLAIN), b"null") == json.dumps(rest).encode()


def test_the_splice_skips_the_transforms_walk_over_the_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    route = _route()
    real = type(route.config).remove_cache_control_flag_from_messages_and_tools

    def spy(self: Any, model: str, messages: Any, tools: Any = None) -> Any:
        seen.append(list(messages))
        return real(self, model, messages, tools)

    monkeypatch.setattr(type(route.config), "remove_cache_control_flag_from_messages_and_tools", spy)
    direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), copy.deepcopy(TOOLS), None))
    assert seen == [[]]
    direct.request_body(route, ModelRequest(copy.deepcopy(MESSAGES), copy.deepcopy(TOOLS), None))
    assert len(seen[1]) == len(MESSAGES)  # content parts: the transform sees every message


def test_a_cache_control_key_or_content_parts_go_through_the_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = copy.deepcopy(PLAIN)
    keyed[1]["cache_control"] = {"type": "ephemeral"}
    image = copy.deepcopy(PLAIN)
    image[3]["content"] = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    parts = copy.deepcopy(PLAIN)
    parts[1]["content"] = [{"type": "text", "text": "a part"}]
    for messages in (keyed, image, parts):
        spliced, walked = _bodies(monkeypatch, _route(), None, None, messages)
        assert spliced == walked  # both through the transform
    assert "cache_control" not in json.loads(_bodies(monkeypatch, _route(), None, None, keyed)[0])["messages"][1]


def test_the_frame_around_the_messages_is_built_once_per_tools_and_temperature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    route = _route()
    real = type(route.config).transform_request

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("optional_params"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(route.config), "transform_request", spy)
    conversations = [PLAIN[:2], PLAIN, PLAIN[:4]]
    for messages in conversations:  # the same tools and temperature: one frame
        spliced, walked = _bodies(monkeypatch, route, TOOLS, 0.3, messages)
        assert json.loads(spliced) == json.loads(walked)
        assert json.loads(spliced)["messages"] == messages
    framed = len(calls) - len(conversations)  # the walked bodies call the transform every time
    assert framed == 1
    _bodies(monkeypatch, route, TOOLS[:1], 0.3, PLAIN)  # other tools: a frame of their own
    _bodies(monkeypatch, route, TOOLS, None, PLAIN)  # another temperature: too
    assert len(calls) - len(conversations) - 2 == framed + 2


def test_messages_encoded_by_the_caller_are_spliced_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from regina.runtime.messages import model_json

    route = _route()
    encoded = [model_json(m) for m in PLAIN]
    given = direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, 0.3, encoded=encoded))[2]
    spliced, walked = _bodies(monkeypatch, route, TOOLS, 0.3, PLAIN)
    assert given == spliced and json.loads(given) == json.loads(walked)
    # The caller's encoding is what goes out (it is not encoded again).
    marked = [*encoded[:-1], b'{"role":"assistant","content":"from the caller"}']
    body = direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, 0.3, encoded=marked))[2]
    assert json.loads(body)["messages"][-1]["content"] == "from the caller"
    # A message the transform must see: the whole conversation goes through it.
    parts = copy.deepcopy(PLAIN)
    parts[1]["content"] = [{"type": "text", "text": "a part"}]
    body = direct.request_body(route, ModelRequest(parts, TOOLS, 0.3, encoded=[model_json(m) for m in parts]))[2]
    assert body == _bodies(monkeypatch, route, TOOLS, 0.3, parts)[1]
    # Encodings that do not match the messages one to one are not used.
    short = direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, 0.3, encoded=marked[1:]))[2]
    assert short == spliced


@pytest.mark.parametrize("model", ["openai/gpt-4o", "openai/o3-mini", "openai/gpt-5", "anthropic/claude-sonnet-4-5"])
def test_the_tool_schemas_handed_in_are_never_edited(model: str) -> None:
    """The loop hands every call the same schema objects (Tool.shared_schema): a transform that
    edits its tools (stripping `cache_control`, renaming keys) must get copies."""
    tools = copy.deepcopy(TOOLS)
    tools[1]["function"]["parameters"]["cache_control"] = {"type": "ephemeral"}
    before = copy.deepcopy(tools)
    provider = model.split("/")[0]
    route = direct.route_for(ModelTarget(provider, model, "sk-test", "http://127.0.0.1:9/v1"))
    assert route is not None
    for messages in (MESSAGES, PLAIN):  # the transform's path, and the splice's
        direct.request_body(route, ModelRequest(copy.deepcopy(messages), tools, None))
    assert tools == before


@pytest.mark.parametrize(
    ("model", "field"), [("openai/gpt-4o", "max_tokens"), ("openai/o3-mini", "max_completion_tokens")]
)
def test_a_token_budgets_cap_goes_out_as_the_provider_names_it(model: str, field: str) -> None:
    """A capped request (a token budget's max_tokens) is the uncapped body plus the cap, mapped
    by LiteLLM per model; it is built whole, leaving the cached frames to uncapped requests."""
    route = _route(model)
    capped = json.loads(direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, None, max_tokens=42))[2])
    assert direct._plain_frame.cache_info().currsize == 0
    plain = json.loads(direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, None))[2])
    assert capped.pop(field) == 42
    assert capped == plain and "max_tokens" not in plain and "max_completion_tokens" not in plain


def test_a_token_budgets_cap_replaces_anthropics_default_max_tokens() -> None:
    target = ModelTarget("anthropic", "anthropic/claude-sonnet-4-5", "sk-ant-test", "http://127.0.0.1:9")
    route = direct.route_for(target)
    assert route is not None
    capped = json.loads(direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, None, max_tokens=42))[2])
    plain = json.loads(direct.request_body(route, ModelRequest(copy.deepcopy(PLAIN), TOOLS, None))[2])
    assert capped["max_tokens"] == 42 and plain["max_tokens"] > 42
