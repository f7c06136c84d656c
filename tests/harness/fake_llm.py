"""A fake LLM *HTTP server* speaking the OpenAI and Anthropic wire formats.

Tests and benchmarks talk to it over a real socket (through LiteLLM, exactly as the runtime
does), so the script lives here in the test process while workers run elsewhere. It serves:

- ``POST …/chat/completions`` (OpenAI; also what LiteLLM's ``vercel_ai_gateway/…`` calls),
- ``POST …/messages`` (Anthropic),

each non-streamed (JSON) or streamed (SSE, flushed chunk by chunk), with text, tool calls and
deterministic usage. Replies come from, in order: a ``push_for(marker, …)`` queue whose marker
occurs in the request's text, the global ``push(…)`` queue, then ``default(request)``. A
request's max tokens (``max_tokens``, or OpenAI's ``max_completion_tokens``) is honoured as a
provider does: a longer reply is cut to that many completion tokens (its text in proportion, its
tool calls dropped) and finishes ``length`` (Anthropic: ``max_tokens``).
An error reply carries ``x-should-retry: false`` so the OpenAI SDK does not retry it behind
LiteLLM's back: one scripted error is one failed call.

Run alone for benchmarks: ``python -m tests.harness.fake_llm --port N`` (prints the URL).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import orjson

from tests.harness.ports import free_port

Api = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class ToolCall:
    """A tool call the fake model makes; ``id`` is filled in ("call_<n>" / "toolu_<n>") if None."""

    name: str
    args: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted model turn: text and/or tool calls, how to stream it, or an HTTP error."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    chunk_size: int = 0  # characters per streamed text chunk; 0 = one word per chunk
    chunk_delay: float = 0.0  # seconds between streamed chunks
    delay: float = 0.0  # seconds before answering at all
    error_status: int | None = None
    error_message: str = "fake LLM error"
    usage: tuple[int, int] | None = None  # (prompt, completion); None = computed from the texts
    cut: bool = False  # set by the server: the request's max tokens cut this reply short

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish reason for this reply."""
        if self.cut:
            return "length"
        return "tool_calls" if self.tool_calls else "stop"

    @property
    def stop_reason(self) -> str:
        """Anthropic's stop reason for this reply."""
        if self.cut:
            return "max_tokens"
        return "tool_use" if self.tool_calls else "end_turn"


@dataclass
class RecordedRequest:
    """A request as received, with the reply chosen for it and the usage it was told."""

    api: Api
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: dict[str, Any]
    reply: Reply = field(default_factory=Reply)  # tool call ids resolved
    usage: tuple[int, int] = (0, 0)

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @functools.cached_property
    def messages(self) -> list[dict[str, Any]]:
        """Messages as ``{"role", "content": str}`` in either format; system first, tool results as "tool".

        Assistant messages that called tools also carry ``tool_calls: [{id, name, args}]``;
        tool messages carry ``tool_call_id``. Built once per request: a long conversation's walk
        would otherwise be the fake's main cost, taken from the cores the system under test runs on.
        """
        if self.api == "anthropic":
            return _anthropic_messages(self.body)
        return _openai_messages(self.body)

    @property
    def last_user_text(self) -> str:
        """Text of the last user message ("" if none)."""
        if self.api == "openai":  # from the end, without normalizing the whole conversation
            for msg in reversed(self.body.get("messages") or []):
                if msg.get("role") == "user":
                    return _text_of(msg.get("content"))
            return ""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""

    @functools.cached_property
    def all_text(self) -> str:
        """Every message's text (system, user, assistant, tool) joined by newlines; usage counts this."""
        if self.api == "openai":  # each message's text is its content's: no need to normalize them
            return "\n".join(_text_of(m.get("content")) for m in self.body.get("messages") or [])
        return "\n".join(m["content"] for m in self.messages)

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered to the model."""
        names = []
        for tool in self.body.get("tools") or []:
            fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            names.append(str(fn.get("name", "")))
        return names


def _text_of(content: Any) -> str:
    """Flatten a message ``content`` (string or list of parts/blocks) to its text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if part.get("type") == "tool_result":
                    parts.append(_text_of(part.get("content")))
                elif "text" in part:
                    parts.append(str(part["text"]))
        return "".join(parts)
    return str(content)


def _openai_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in body.get("messages") or []:
        role = str(msg.get("role", ""))
        norm: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _text_of(msg.get("content")),
        }
        if msg.get("tool_calls"):
            norm["tool_calls"] = [
                {
                    "id": tc.get("id"),
                    "name": tc.get("function", {}).get("name"),
                    "args": _loads_or_raw(tc.get("function", {}).get("arguments") or "{}"),
                }
                for tc in msg["tool_calls"]
            ]
        if role == "tool":
            norm["tool_call_id"] = msg.get("tool_call_id")
        out.append(norm)
    return out


def _anthropic_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.get("system"):
        out.append({"role": "system", "content": _text_of(body["system"])})
    for msg in body.get("messages") or []:
        role = str(msg.get("role", ""))
        content = msg.get("content")
        if not isinstance(content, list):
            out.append({"role": role, "content": _text_of(content)})
            continue
        calls = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        rest = [b for b in content if b not in calls and b not in results]
        for res in results:
            out.append(
                {"role": "tool", "content": _text_of(res.get("content")), "tool_call_id": res.get("tool_use_id")}
            )
        if rest or calls or not results:
            norm: dict[str, Any] = {"role": role, "content": _text_of(rest)}
            if calls:
                norm["tool_calls"] = [{"id": b.get("id"), "name": b.get("name"), "args": b.get("input")} for b in calls]
            out.append(norm)
    return out


def _loads_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def default_reply(req: RecordedRequest) -> Reply:
    """The built-in behaviour when nothing is scripted: echo the last user message."""
    return Reply(text=f"echo: {req.last_user_text}")


def compute_usage(req: RecordedRequest, reply: Reply) -> tuple[int, int]:
    """Deterministic (prompt, completion) tokens: characters / 4 + 1, like the runtime's estimate."""
    if reply.usage is not None:
        return reply.usage
    completion = reply.text + "".join(json.dumps(tc.args) for tc in reply.tool_calls)
    return len(req.all_text) // 4 + 1, len(completion) // 4 + 1


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """The most completion tokens a request allows (None: no limit sent)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def cut_reply(reply: Reply, completion: int, limit: int) -> Reply:
    """`reply` cut to `limit` of its `completion` tokens, as a provider stops at max tokens: the
    text in proportion, no tool call (one cut short would not be whole)."""
    keep = len(reply.text) * max(0, limit) // max(1, completion)
    return dataclasses.replace(reply, text=reply.text[:keep], tool_calls=[], cut=True)


def _text_chunks(text: str, size: int) -> list[str]:
    """Split streamed text: ``size`` characters per chunk, or one word (with its trailing space) if 0."""
    if not text:
        return []
    if size > 0:
        return [text[i : i + size] for i in range(0, len(text), size)]
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


def _arg_chunks(args_json: str, size: int) -> list[str]:
    """Split a tool call's JSON arguments into several deltas, as real providers do."""
    step = size if size > 0 else 16
    return [args_json[i : i + step] for i in range(0, len(args_json), step)] or [""]


class _Gaps:
    """Yields the ``chunk_delay`` marker (None) between streamed pieces: not before the first one."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self) -> Iterator[None]:
        if self.first:
            self.first = False
        else:
            yield None


# --------------------------------------------------------------------------------------------
# Wire formats. Each returns (status, json body) or yields SSE frames (bytes).


def _openai_error(reply: Reply) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(reply.error_status or 500, "server_error")
    return {"error": {"message": reply.error_message, "type": kind, "param": None, "code": str(reply.error_status)}}


def _anthropic_error(reply: Reply) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(reply.error_status or 500, "api_error")
    return {"type": "error", "error": {"type": kind, "message": reply.error_message}}


def _openai_usage(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}


def _openai_json(req: RecordedRequest, rid: str) -> dict[str, Any]:
    reply = req.reply
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": json.dumps(tc.args)}}
            for tc in reply.tool_calls
        ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": _openai_usage(req.usage),
    }


def _openai_sse(req: RecordedRequest, rid: str) -> Iterator[dict[str, Any] | None]:
    """OpenAI chunks; ``None`` marks a point where ``chunk_delay`` applies."""
    reply = req.reply
    base = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    gap = _Gaps()
    yield chunk({"role": "assistant", "content": ""})
    for piece in _text_chunks(reply.text, reply.chunk_size):
        yield from gap()
        yield chunk({"content": piece})
    for index, tc in enumerate(reply.tool_calls):
        yield from gap()
        yield chunk(
            {
                "tool_calls": [
                    {"index": index, "id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
                ]
            }
        )
        for piece in _arg_chunks(json.dumps(tc.args), reply.chunk_size):
            yield from gap()
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    opts = req.body.get("stream_options") or {}
    if opts.get("include_usage"):
        yield chunk({}, reply.finish_reason)
        yield {**base, "choices": [], "usage": _openai_usage(req.usage)}
    else:
        # Not asked for, but LiteLLM only reports streamed usage it was sent: put it on the last chunk.
        yield {**chunk({}, reply.finish_reason), "usage": _openai_usage(req.usage)}


def _anthropic_json(req: RecordedRequest, rid: str) -> dict[str, Any]:
    reply = req.reply
    content: list[dict[str, Any]] = []
    if reply.text or not reply.tool_calls:
        content.append({"type": "text", "text": reply.text})
    content += [{"type": "tool_use", "id": tc.id, "name": tc.name, "input": tc.args} for tc in reply.tool_calls]
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": req.usage[0], "output_tokens": req.usage[1]},
    }


def _anthropic_sse(req: RecordedRequest, rid: str) -> Iterator[tuple[str, dict[str, Any]] | None]:
    """Anthropic (event, data) pairs; ``None`` marks a point where ``chunk_delay`` applies."""
    reply = req.reply
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": req.usage[0], "output_tokens": 1},
            },
        },
    )
    gap = _Gaps()
    index = 0
    if reply.text:
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        for piece in _text_chunks(reply.text, reply.chunk_size):
            yield from gap()
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        index = 1
    for tc in reply.tool_calls:
        yield from gap()
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}},
            },
        )
        for piece in _arg_chunks(json.dumps(tc.args), reply.chunk_size):
            yield from gap()
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
        index += 1
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"input_tokens": req.usage[0], "output_tokens": req.usage[1]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


# --------------------------------------------------------------------------------------------
# HTTP plumbing.


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (pool closed, stream abandoned) is normal; report anything else."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1; Nagle off so small replies are not held back by delayed ACKs."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        """Silence the per-request stderr line (it would cost more than the request)."""

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/", "/health", "/healthz"):
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        api: Api
        if path.endswith("/chat/completions"):
            api = "openai"
        elif path.endswith("/messages"):
            api = "anthropic"
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found_error"}})
            return
        try:
            body = _loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            self._send_json(400, _error_body(api, Reply(error_status=400, error_message=f"bad JSON: {exc}")))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = self.server.fake._receive(RecordedRequest(api=api, path=self.path, headers=headers, body=body))
        reply = req.reply
        if reply.delay:
            time.sleep(reply.delay)
        if reply.error_status is not None:
            self._send_json(reply.error_status, _error_body(api, reply))
            return
        rid = self.server.fake._next_id("chatcmpl-" if api == "openai" else "msg_")
        try:
            if not req.stream:
                self._send_json(200, _openai_json(req, rid) if api == "openai" else _anthropic_json(req, rid))
            elif api == "openai":
                self._stream(
                    ((None if c is None else b"data: " + _dumps(c) + b"\n\n") for c in _openai_sse(req, rid)),
                    reply.chunk_delay,
                    b"data: [DONE]\n\n",
                )
            else:
                self._stream(
                    (
                        (None if e is None else b"event: " + e[0].encode() + b"\ndata: " + _dumps(e[1]) + b"\n\n")
                        for e in _anthropic_sse(req, rid)
                    ),
                    reply.chunk_delay,
                    b"",
                )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = _dumps(payload)
        # x-should-retry: the OpenAI SDK would otherwise retry 429/5xx twice (consuming scripted replies).
        extra = "x-should-retry: false\r\n" if status >= 400 else ""
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('Error',))[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
        ).encode()
        self.wfile.write(head + data)  # one write: headers and body in the same segment

    def _stream(self, frames: Iterator[bytes | None], delay: float, tail: bytes) -> None:
        """Send SSE frames as HTTP/1.1 chunks, each written (hence flushed) as it is produced."""
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for frame in itertools.chain(frames, [tail] if tail else []):
            if frame is None:
                if delay:
                    time.sleep(delay)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        self.wfile.write(b"0\r\n\r\n")


def _loads(raw: bytes) -> Any:
    """orjson (a long conversation's body is the fake's biggest parse); json for what it refuses (NaN)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _dumps(obj: Any) -> bytes:
    """Compact JSON: orjson (json.dumps of a streamed answer's frames was most of the fake's own
    CPU, taken from the cores benchmarks run the system under test on); json for what orjson
    refuses (non-string keys, integers past 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def _error_body(api: Api, reply: Reply) -> dict[str, Any]:
    return _openai_error(reply) if api == "openai" else _anthropic_error(reply)


# --------------------------------------------------------------------------------------------
# The scripting API.


class FakeLLM:
    """The fake model server plus its script. Start it, point LiteLLM's ``api_base`` at it, assert."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or 0
        self.default: Callable[[RecordedRequest], Reply] = default_reply
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._marked: dict[str, deque[Reply]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the Anthropic base; the OpenAI base is ``url + "/v1"``."""
        if self._server is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeLLM:
        """Bind and serve in a daemon thread; returns self once it accepts connections."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port or free_port()), _Handler)
        self._server.fake = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-llm-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests (any request no ``push_for`` queue claims)."""
        with self._cond:
            self._script.extend(replies)

    def push_for(self, marker: str, *replies: Reply) -> None:
        """Queue replies only for requests whose messages (system prompt included) contain ``marker``."""
        with self._cond:
            self._marked.setdefault(marker, deque()).extend(replies)

    def reset(self) -> None:
        """Forget scripts, the custom default and recorded requests (between tests)."""
        with self._cond:
            self._script.clear()
            self._marked.clear()
            self.requests = []
            self.default = default_reply

    def pending(self) -> int:
        """How many scripted replies are still unused (global and marked)."""
        with self._cond:
            return len(self._script) + sum(len(q) for q in self._marked.values())

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were received; return them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                got = len(self.requests)
                raise AssertionError(f"fake LLM got {got} requests, expected {n} within {timeout}s")
            return list(self.requests)

    # Called from handler threads.

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _choose(self, req: RecordedRequest) -> Reply:
        with self._cond:
            if self._marked:
                text = req.all_text
                for marker, queue in self._marked.items():
                    if queue and marker in text:
                        return queue.popleft()
            if self._script:
                return self._script.popleft()
            default = self.default
        try:
            return default(req)
        except Exception as exc:  # noqa: BLE001 - a broken default becomes a visible 500 for the test
            return Reply(error_status=500, error_message=f"fake LLM default raised {exc!r}")

    def _receive(self, req: RecordedRequest) -> RecordedRequest:
        """Pick the reply, resolve tool call ids, compute usage, honour max tokens, record — before
        any delay."""
        reply = self._choose(req)
        prefix = "call_" if req.api == "openai" else "toolu_"
        calls = [tc if tc.id else dataclasses.replace(tc, id=self._next_id(prefix)) for tc in reply.tool_calls]
        req.reply = dataclasses.replace(reply, tool_calls=calls)
        req.usage = compute_usage(req, req.reply)
        limit = max_tokens_of(req.body)
        if limit is not None and req.usage[1] > limit and req.reply.error_status is None:
            req.reply = cut_reply(req.reply, req.usage[1], limit)
            req.usage = (req.usage[0], limit)
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        return req


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; every request gets the default (echo) or a fixed reply."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness.fake_llm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--text", default=None, help="answer this instead of echoing the user")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    args = parser.parse_args(argv)

    fake = FakeLLM(args.host, args.port)
    if args.text is not None or args.delay or args.chunk_delay:

        def fixed(req: RecordedRequest) -> Reply:
            text = args.text if args.text is not None else f"echo: {req.last_user_text}"
            return Reply(text=text, delay=args.delay, chunk_delay=args.chunk_delay)

        fake.default = fixed
    else:
        fake.default = default_reply

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    fake.start()
    print(fake.url, flush=True)
    # Standalone runs serve benchmarks for a long time: do not keep every request in memory.
    while not stop.wait(0.1):  # short waits: a signal does not cut an Event.wait short
        with fake._cond:
            del fake.requests[:-1000]
    fake.stop()


if __name__ == "__main__":
    main()
