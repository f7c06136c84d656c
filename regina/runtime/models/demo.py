"""The offline demo model: a deterministic LiteLLM provider so Regina runs with no API key.

`register_demo_provider()` adds it to `litellm.custom_provider_map` as `regina-demo`; a
definition with `provider: demo` resolves to the LiteLLM model `regina-demo/<model>`
(`regina.providers`); `regina.runtime.models.setup` registers it when it configures LiteLLM.
It supports `litellm.completion` and `litellm.acompletion`, with and without `stream=True`.

Behaviour, on the last message of the conversation (case-insensitive, deterministic):

- `write <text> to <path>`  → calls `write_file` (when offered) with that path and content;
- `read <path>`             → calls `read_file`;
- `run <command>`           → calls `bash`;
- `ask <agent> <message>`   → calls `delegate` (when offered) with that agent and message;
- `use <tool> {json args}`  → calls any offered tool with those arguments;
- a message asking to summarize → a short summary of the user messages (used by compaction);
- the last message is a tool result → a short answer quoting the result;
- anything else → a greeting that echoes the message and counts the conversation's messages,
  so a newcomer sees the conversation being remembered across turns.

Tool argument names are read from the offered tool's JSON schema (`path`/`file_path`,
`content`/`text`, `command`/`cmd`, …), so the demo follows the real tools' parameters.
Usage is estimated as characters / 4 (at least 1), like compaction's estimate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm import ModelResponse
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from regina.providers import DEMO_LITELLM_PROVIDER

_RESULT_PREVIEW = 400
_register_lock = threading.Lock()


@dataclass
class DemoToolCall:
    """One tool call the demo model decided to make."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class DemoReply:
    """What the demo model answers: text, tool calls, or both."""

    text: str = ""
    tool_calls: list[DemoToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        """`tool_calls` when the reply calls tools, else `stop` (OpenAI's names)."""
        return "tool_calls" if self.tool_calls else "stop"


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _text_of(content: Any) -> str:
    """Plain text of a message content: a string or a list of OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [_get(p, "text") for p in content]
        return " ".join(p for p in parts if isinstance(p, str))
    return str(content)


def _tool_schemas(tools: Any) -> dict[str, dict[str, Any]]:
    """Map tool name → its parameters' `properties` for the tools offered to the model."""
    found: dict[str, dict[str, Any]] = {}
    for entry in tools or []:
        fn = _get(entry, "function") or entry
        name = _get(fn, "name")
        params = _get(fn, "parameters") or {}
        if isinstance(name, str):
            props = params.get("properties") if isinstance(params, Mapping) else None
            found[name] = dict(props) if isinstance(props, Mapping) else {}
    return found


def _pick(props: Mapping[str, Any], candidates: Sequence[str]) -> str:
    for name in candidates:
        if name in props:
            return name
    return candidates[0]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1]
    return text


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_WRITE = re.compile(r"^(?:please\s+)?write\s+(?P<content>.+?)\s+(?:to|into)\s+(?P<path>\S+?)[.!]?$", re.I | re.S)
_READ = re.compile(r"^(?:please\s+)?read\s+(?P<path>\S+?)[.!]?$", re.I)
_RUN = re.compile(r"^(?:please\s+)?(?:run|execute)\s+(?P<command>.+)$", re.I | re.S)
_ASK = re.compile(r"^(?:please\s+)?(?:ask|delegate\s+to)\s+(?P<agent>[\w.-]+)[:,]?\s+(?P<message>.+)$", re.I | re.S)
_USE = re.compile(r"^(?:please\s+)?(?:use|call)\s+(?P<tool>[\w.-]+)\s*(?:with\s*)?(?P<args>\{.*\})?\s*$", re.I | re.S)


def _call_id(messages: Sequence[Any]) -> str:
    return f"call_demo_{len(messages)}"


def _tool_request(text: str, tools: dict[str, dict[str, Any]], call_id: str) -> DemoReply | None:
    """A tool call when `text` asks for one, a refusal when the tool is not offered, else None."""
    wanted: tuple[str, dict[str, Any]] | None = None
    if m := _WRITE.match(text):
        props = tools.get("write_file", {})
        wanted = (
            "write_file",
            {
                _pick(props, ("path", "file_path", "filename")): m["path"],
                _pick(props, ("content", "text", "data")): _unquote(m["content"]),
            },
        )
    elif m := _READ.match(text):
        props = tools.get("read_file", {})
        wanted = ("read_file", {_pick(props, ("path", "file_path", "filename")): m["path"]})
    elif (m := _ASK.match(text)) and "delegate" in tools:
        props = tools["delegate"]
        wanted = (
            "delegate",
            {
                _pick(props, ("agentType", "agent_type", "agent")): m["agent"],
                _pick(props, ("message", "prompt")): m["message"].strip(),
            },
        )
    elif (m := _USE.match(text)) and m["tool"] in tools:
        try:
            args = json.loads(m["args"]) if m["args"] else {}
        except json.JSONDecodeError as exc:
            return DemoReply(text=f"I could not read those arguments as JSON: {exc.msg}.")
        if not isinstance(args, dict):
            return DemoReply(text="Tool arguments must be a JSON object.")
        wanted = (m["tool"], args)
    elif m := _RUN.match(text):
        props = tools.get("bash", {})
        wanted = ("bash", {_pick(props, ("command", "cmd", "script")): m["command"].strip()})
    if wanted is None:
        return None
    name, args = wanted
    if name not in tools:
        offered = ", ".join(sorted(tools)) or "none"
        return DemoReply(
            text=f"I would use the {name} tool for that, but it is not available here (tools offered: {offered})."
        )
    return DemoReply(tool_calls=[DemoToolCall(id=call_id, name=name, arguments=args)])


def _after_tools(messages: Sequence[Any]) -> DemoReply:
    """Answer the tool results at the end of the conversation."""
    names: dict[str, str] = {}
    for msg in messages:
        for call in _get(msg, "tool_calls") or []:
            call_id, fn = _get(call, "id"), _get(call, "function")
            if isinstance(call_id, str) and fn is not None:
                names[call_id] = str(_get(fn, "name"))
    results: list[str] = []
    for msg in reversed(messages):
        if _get(msg, "role") != "tool":
            break
        name = _get(msg, "name") or names.get(str(_get(msg, "tool_call_id")), "tool")
        output = _text_of(_get(msg, "content")).strip()
        if len(output) > _RESULT_PREVIEW:
            output = output[:_RESULT_PREVIEW] + "…"
        results.append(f"The {name} tool returned: {output or '(nothing)'}")
    results.reverse()
    return DemoReply(text="Done. " + "\n".join(results))


def demo_reply(messages: Sequence[Any], tools: Any = None) -> DemoReply:
    """Decide the demo model's deterministic reply to `messages` with `tools` offered."""
    if messages and _get(messages[-1], "role") == "tool":
        return _after_tools(messages)
    user_texts = [_text_of(_get(m, "content")).strip() for m in messages if _get(m, "role") == "user"]
    last = user_texts[-1] if user_texts else ""
    offered = _tool_schemas(tools)
    request = _tool_request(last, offered, _call_id(messages))
    if request is not None:
        return request
    if re.search(r"\bsummar(?:y|ise|ize)\b", last, re.I):
        said = "; ".join(f"“{_snippet(t, 60)}”" for t in user_texts[:-1]) or "nothing yet"
        return DemoReply(text=f"Summary of the earlier conversation ({len(messages)} messages): the user said {said}.")
    count = f"This conversation has {len(messages)} messages so far ({len(user_texts)} from you)."
    hints = "Try “write hello to /notes.txt”, “read /notes.txt” or “run ls /” to see me use tools."
    if len(user_texts) <= 1:
        return DemoReply(
            text=f"Hello! I am the Regina demo agent, an offline stand-in for a real "
            f"model, so no API key is needed. You said: “{_snippet(last)}”. {count} {hints}"
        )
    return DemoReply(
        text=f"You said: “{_snippet(last)}”. I remember that your first message was "
        f"“{_snippet(user_texts[0])}”. {count} {hints}"
    )


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _usage(messages: Sequence[Any], reply: DemoReply) -> dict[str, int]:
    prompt_chars = 0
    for msg in messages:
        prompt_chars += len(_text_of(_get(msg, "content")))
        for call in _get(msg, "tool_calls") or []:
            fn = _get(call, "function")
            prompt_chars += len(str(_get(fn, "arguments") or "")) if fn is not None else 0
    completion_text = reply.text + "".join(json.dumps(c.arguments) for c in reply.tool_calls)
    prompt, completion = _estimate_tokens("x" * prompt_chars), _estimate_tokens(completion_text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text_pieces(text: str) -> list[str]:
    """Split text into word-sized stream deltas that join back to exactly `text`."""
    return re.findall(r"\S+\s*|\s+", text)


class DemoLLM(CustomLLM):
    """LiteLLM custom provider answering with `demo_reply`; see the module docstring."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        """Non-streaming completion: one ModelResponse with text and/or tool calls."""
        model, messages = kwargs.get("model", "demo"), kwargs.get("messages") or []
        reply = demo_reply(messages, (kwargs.get("optional_params") or {}).get("tools"))
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in reply.tool_calls
            ]
        return ModelResponse(
            model=model,
            created=int(time.time()),
            choices=[{"index": 0, "finish_reason": reply.finish_reason, "message": message}],
            usage=_usage(messages, reply),
        )

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        """Streaming completion: word deltas, then tool calls, then a last chunk with usage."""
        messages = kwargs.get("messages") or []
        reply = demo_reply(messages, (kwargs.get("optional_params") or {}).get("tools"))
        for piece in _text_pieces(reply.text):
            yield GenericStreamingChunk(
                text=piece, tool_use=None, is_finished=False, finish_reason="", usage=None, index=0
            )
        for i, call in enumerate(reply.tool_calls):
            yield GenericStreamingChunk(
                text="",
                tool_use={
                    "id": call.id,
                    "type": "function",
                    "index": i,
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                },
                is_finished=False,
                finish_reason="",
                usage=None,
                index=0,
            )
        usage = _usage(messages, reply)
        yield GenericStreamingChunk(
            text="",
            tool_use=None,
            is_finished=True,
            finish_reason=reply.finish_reason,
            index=0,
            usage={
                "prompt_tokens": usage["prompt_tokens"],
                "completion_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"],
            },
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        """`litellm.acompletion` without streaming: the same reply as `completion`."""
        return self.completion(*args, **kwargs)

    async def astreaming(  # type: ignore[override]  # LiteLLM iterates an async generator here
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        """`litellm.acompletion(stream=True)`: the same chunks as `streaming`."""
        for chunk in self.streaming(*args, **kwargs):
            yield chunk


def register_demo_provider() -> None:
    """Register the demo model with LiteLLM as `regina-demo` (safe to call any number of times)."""
    with _register_lock:
        current = list(litellm.custom_provider_map)
        if any(item.get("provider") == DEMO_LITELLM_PROVIDER for item in current):
            return
        litellm.custom_provider_map = [
            *current,
            {"provider": DEMO_LITELLM_PROVIDER, "custom_handler": DemoLLM()},
        ]
        litellm.utils.custom_llm_setup()  # type: ignore[no-untyped-call]
