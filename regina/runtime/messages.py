"""The conversation: a list of OpenAI-format message dicts, which LiteLLM takes for every provider.

    {"role": "system" | "user" | "assistant" | "tool", "content": str | None,
     "tool_calls": [{"id", "type": "function", "function": {"name", "arguments": "<json str>"}}],
     "tool_call_id": "...", "name": "..."}

We may add metadata keys (`runId`, `ts`, …) to a persisted message; `for_model` strips them.
`repair` keeps a transcript valid after a crash or a cancel (SPEC §12): every assistant tool call
has exactly one tool result right after its assistant message, and no tool result is orphaned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

__all__ = [
    "Message",
    "utf8_safe",
    "MODEL_KEYS",
    "OUTCOME_UNKNOWN",
    "user",
    "assistant",
    "tool_result",
    "tool_call",
    "dumps_result",
    "encode_result",
    "to_jsonl",
    "from_jsonl",
    "repair",
    "for_model",
    "model_json",
    "goes_out_as_is",
    "text_of",
]

Message = dict[str, Any]

#: Keys the model sees; everything else on a message is our metadata.
MODEL_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})

#: Result recorded for a tool call whose run stopped before the tool returned.
OUTCOME_UNKNOWN: dict[str, str] = {
    "error": "outcome unknown: the worker stopped while this tool was running; it was not run again"
}


def utf8_safe(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD. A model or a tool can hand over half
    of a surrogate pair (a JSON `"\\ud83d"` escape, a JavaScript string cut in two), which no
    UTF-8 writer accepts: the transcript's append failed and the turn with it. The common case
    costs one check (an ASCII string: none)."""
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def user(text: str, **meta: Any) -> Message:
    """A user message."""
    return {"role": "user", "content": text, **meta}


def tool_call(call_id: str, name: str, args: dict[str, Any] | str) -> dict[str, Any]:
    """One entry of an assistant message's `tool_calls` (arguments as a JSON string)."""
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant(text: str | None, tool_calls: Sequence[dict[str, Any]] | None = None, **meta: Any) -> Message:
    """An assistant message; `tool_calls` are entries made by `tool_call`."""
    msg: Message = {"role": "assistant", "content": utf8_safe(text) if text else ""}
    if tool_calls:
        msg["tool_calls"] = list(tool_calls)
    msg.update(meta)
    return msg


def dumps_result(result: Any) -> str:
    """A tool result as the string content of a tool message (strings stay as they are)."""
    return encode_result(result)[0]


def encode_result(result: Any) -> tuple[str, bool]:
    """(a tool result as a tool message's content, whether that is the result's JSON): a value
    JSON cannot hold (a dict with tuple keys, a cycle) is shown as its repr instead; lone
    surrogates become U+FFFD (`utf8_safe`)."""
    if isinstance(result, str):
        return utf8_safe(result), False
    try:
        return utf8_safe(json.dumps(result, ensure_ascii=False, default=str)), True
    except (TypeError, ValueError, RecursionError):
        return repr(result)[:1_000_000], False


def tool_result(call_id: str, name: str, result: Any, **meta: Any) -> Message:
    """A tool message answering the assistant tool call `call_id`."""
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": dumps_result(result), **meta}


def to_jsonl(msgs: Iterable[Message]) -> bytes:
    """Messages as JSONL: one compact JSON object per line, each line ending in a newline."""
    return b"".join(
        json.dumps(m, ensure_ascii=False, separators=(",", ":"), default=str).encode() + b"\n" for m in msgs
    )


def from_jsonl(data: bytes) -> list[Message]:
    """Parse JSONL; a torn or corrupt line (a crash mid-append) is skipped, never fatal."""
    msgs: list[Message] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("role"), str):
            msgs.append(obj)
    return msgs


def _call_ids(msg: Message) -> list[str]:
    return [str(tc.get("id")) for tc in msg.get("tool_calls") or () if isinstance(tc, dict)]


def repair(msgs: Sequence[Message]) -> tuple[list[Message], bool]:
    """Make a transcript valid for the next model request.

    - Each assistant message with tool calls is followed by exactly one tool message per call
      (in call order); a missing one gets `OUTCOME_UNKNOWN` as its result.
    - Tool messages that answer no pending call (orphans, duplicates) are dropped.

    Returns (messages, changed). The input is not modified.
    """
    out: list[Message] = []
    changed = False
    i, n = 0, len(msgs)
    while i < n:
        msg = msgs[i]
        i += 1
        role = msg.get("role")
        if role == "tool":  # not directly after its assistant message: orphan
            changed = True
            continue
        out.append(msg)
        if role != "assistant" or not msg.get("tool_calls"):
            continue
        ids = _call_ids(msg)
        names = {str(tc.get("id")): tc.get("function", {}).get("name", "") for tc in msg["tool_calls"]}
        found: dict[str, Message] = {}
        while i < n and msgs[i].get("role") == "tool":
            tid = str(msgs[i].get("tool_call_id"))
            if tid in names and tid not in found:
                found[tid] = msgs[i]
            else:
                changed = True
            i += 1
        for cid in ids:
            if cid in found:
                out.append(found[cid])
            else:
                changed = True
                out.append(tool_result(cid, str(names.get(cid, "")), OUTCOME_UNKNOWN))
        if not changed and list(found) != ids:
            changed = True  # results were out of order
    return out, changed


def for_model(msgs: Iterable[Message]) -> list[Message]:
    """Shallow copies holding only the keys a provider accepts (drops runId, ts, …)."""
    return [{k: v for k, v in m.items() if k in MODEL_KEYS} for m in msgs]


#: A message content that is neither text nor null, in orjson's compact JSON (where a quote
#: inside a string is escaped: `"content":` is a message's key, which no other key holds).
_PARTS = re.compile(rb'"content":(?!"|null[,}])')


def model_json(msg: Message) -> bytes | None:
    """A model-form message (`for_model`) as compact UTF-8 JSON (orjson) when a provider's
    request transform would send it as it is: its content is text or null (no content parts to
    rewrite) and no `cache_control` key is in it (none to strip). None otherwise, or when it is
    not plain JSON data. A long-lived conversation's messages are encoded and checked once each,
    as they join it (`Session.model_json`), not on every step of every later turn."""
    try:
        dumped = orjson.dumps(msg)
    except TypeError:
        return None
    # A copy of its own length: orjson's bytes keep their whole output buffer (4 KB for a short
    # message), and these live as long as the conversation does.
    return memoryview(dumped).tobytes() if goes_out_as_is(dumped) else None


def goes_out_as_is(dumped: bytes) -> bool:
    """Whether messages in orjson's compact JSON (one, or a list of them) hold no content parts
    and no `cache_control` key: nothing a provider's request transform would rewrite."""
    return b'"cache_control"' not in dumped and _PARTS.search(dumped) is None


def text_of(msg: Message) -> str:
    """The text content of a message (joins content parts if it is a list)."""
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
