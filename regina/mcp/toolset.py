"""The MCP servers of one attached instance, seen from the worker's greenlets (SPEC §5, §12).

`McpToolset` is created on attach and closed on suspend, delete and shutdown. Its methods are
called from greenlets and run the SDK's coroutines on the worker's one asyncio loop
(`regina.runtime.aio.run_coro`), so waiting never blocks the gevent hub.

- `open()` connects every server concurrently, each bounded by `mcp.connectTimeout`; a server
  that fails (unreachable, refused by the SSRF guard, slow) is skipped with a WARNING naming the
  agent, the server and the reason.
- `tools()` is called before every model step: it retries servers that are down (at once after
  a server dropped mid-run, else every `mcp.retryInterval` seconds), re-lists the tools of a
  server that sent a list-changed notification, and returns `<server>_<tool>` tools whose
  parameters are the server's JSON schema as given.
- A tool call whose connection is gone reconnects first (`ServerConnection.call`); one whose
  server cannot be reached, or dropped while it ran, gives the model a tool error and reports
  `(server, error)` through `on_degraded` (the host emits the `tool-degraded` event).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import mcp_types as types
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict

from regina.config import McpSettings
from regina.definitions import McpServer
from regina.errors import ToolError
from regina.mcp.connection import ServerConnection, ServerDown, ServerToolError
from regina.outbound import Allowlist
from regina.runtime.aio import run_coro
from regina.runtime.sink import RunCancelled
from regina.runtime.tools.base import Tool

log = logging.getLogger("regina.mcp")

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Arguments(BaseModel):
    """Any JSON object: the server validates its own arguments against its schema."""

    model_config = ConfigDict(extra="allow")


def format_result(result: types.CallToolResult) -> Any:
    """A tool result as the history stores it: text, structured content, notes for media.

    Text blocks are joined; images and audio become a short note (the model gets no bytes);
    structured content is returned alone when the text only repeats it, else beside it. An
    `isError` result becomes `{"error": text}`.
    """
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            kind = "image" if isinstance(block, types.ImageContent) else "audio"
            size = len(base64.b64decode(block.data, validate=False)) if block.data else 0
            parts.append(f"[{kind}: {block.mime_type}, {size} bytes]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource: {block.uri}]")
        elif isinstance(block, types.EmbeddedResource):
            res = block.resource
            parts.append(res.text if isinstance(res, types.TextResourceContents) else f"[resource: {res.uri}]")
    text = "\n".join(parts)
    if result.is_error:
        return {"error": text or "the MCP tool reported an error"}
    structured = result.structured_content
    if structured is None or structured == {"result": text}:  # a plain value, wrapped
        return text
    if not text or _same(text, structured):
        return structured
    return {"text": text, "structuredContent": structured}


def _same(text: str, structured: Any) -> bool:
    try:
        return bool(json.loads(text) == structured)
    except ValueError:
        return False


def schema_problem(schema: Any) -> str | None:
    """Why a tool's input schema cannot go to a model provider (None: it can): it must be a valid
    JSON Schema of an object (the function parameters every provider takes)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "is not a JSON Schema of type object"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return f"is not valid JSON Schema: {exc.message}"
    return None


class McpToolset:
    """Connections to one instance's MCP servers and the tools they offer."""

    def __init__(self, agent: str, servers: Sequence[McpServer], settings: McpSettings, allow: Allowlist) -> None:
        self.agent = agent
        self.settings = settings
        self.conns = {s.name: ServerConnection(s, allow, settings.connect_timeout) for s in servers}
        self.next_try: dict[str, float] = {}
        #: Called with (server, error) when a call finds its server gone (set per run by the host).
        self.on_degraded: Callable[[str, str], None] | None = None
        self._tools: dict[str, Tool] = {}
        self._built_from: list[int] = []
        #: Closed with the instance's activation: nothing connects again (a step still running
        #: as its instance is dropped would open connections nothing ever closes).
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect every server concurrently; failures are logged and skipped."""
        self._connect(list(self.conns))

    def close(self) -> None:
        """Close every connection (suspend, delete, shutdown), for good."""
        self.closed = True
        if self.conns:
            try:
                run_coro(self._close_all(), timeout=15)
            except Exception:
                log.warning("agent %s: closing MCP connections failed", self.agent, exc_info=True)

    async def _close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.conns.values()), return_exceptions=True)

    def _connect(self, names: list[str]) -> None:
        if not names or self.closed:
            return
        try:
            outcomes = run_coro(self._open_many(names), timeout=self.settings.connect_timeout + 10)
        except RunCancelled:
            raise  # the run was stopped while it waited (not the servers' doing: no back-off)
        except Exception as exc:  # the loop itself failed us: count every server as down
            outcomes = [f"{type(exc).__name__}: {exc}"] * len(names)
        now = time.monotonic()
        for name, error in zip(names, outcomes, strict=True):
            if error is None:
                self.next_try.pop(name, None)
                log.info("agent %s: MCP server %s connected (%d tools)", self.agent, name, len(self.conns[name].tools))
            else:
                self.next_try[name] = now + self.settings.retry_interval
                log.warning("agent %s: MCP server %s skipped: %s", self.agent, name, error)

    async def _open_many(self, names: list[str]) -> list[str | None]:
        async def one(name: str) -> str | None:
            try:
                await self.conns[name].open()
            except ServerDown as exc:
                return exc.message
            return None

        return list(await asyncio.gather(*(one(n) for n in names)))

    # -- tools -----------------------------------------------------------------------------

    def tools(self) -> dict[str, Tool]:
        """The `<server>_<tool>` tools for the next step (reconnecting and re-listing first)."""
        if self.closed:
            return {}
        now = time.monotonic()
        due = [n for n, c in self.conns.items() if not c.up and now >= self.next_try.get(n, 0.0)]
        self._connect(due)
        stale = [c for c in self.conns.values() if c.up and c.stale]
        if stale:
            self._relist(stale)
        key = [c.tools_version for c in self.conns.values()]
        if key != self._built_from:
            self._tools = self._build()
            self._built_from = key
        return self._tools

    def _relist(self, stale: list[ServerConnection]) -> None:
        """List again the tools of servers that said they changed; one that fails is taken for
        down and reconnected after retryInterval (not waited on again at every step)."""
        try:
            outcomes = run_coro(self._refresh(stale), timeout=self.settings.connect_timeout + 5)
        except RunCancelled:
            raise  # the run was stopped while it waited (not the servers' doing: no back-off)
        except Exception as exc:  # noqa: BLE001 - every server of the batch counts as failed
            outcomes = [exc] * len(stale)
        for conn, outcome in zip(stale, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                name = conn.server.name
                self.next_try[name] = time.monotonic() + self.settings.retry_interval
                log.warning("agent %s: re-listing MCP server %s's tools failed: %s", self.agent, name, outcome)

    async def _refresh(self, conns: list[ServerConnection]) -> list[BaseException | None]:
        return list(await asyncio.gather(*(c.refresh_tools() for c in conns), return_exceptions=True))

    def _build(self) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        for name, conn in self.conns.items():
            for spec in conn.tools:
                full = f"{name}_{spec.name}"
                if not _TOOL_NAME.match(full):
                    log.warning("agent %s: MCP tool %r skipped: not a valid tool name", self.agent, full)
                    continue
                problem = schema_problem(spec.input_schema)
                if problem is not None:  # sent on, it would make the provider refuse every request
                    log.warning("agent %s: MCP tool %r skipped: its input schema %s", self.agent, full, problem)
                    continue
                tools[full] = Tool(
                    name=full,
                    description=spec.description or spec.title or full,
                    parameters=_Arguments,
                    fn=self._caller(conn, spec.name),
                    json_schema=spec.input_schema,
                    inline=True,  # the session lives on the worker's loop
                )
        return tools

    def _caller(self, conn: ServerConnection, tool: str) -> Callable[[_Arguments], Any]:
        timeout = self.settings.call_timeout

        def call(params: _Arguments) -> Any:
            args = params.model_dump()
            server = conn.server.name
            try:
                # The call replaces a dead connection first (bounded by the same deadline); one
                # with no answer pings the server (connectTimeout) before it says why.
                result = run_coro(conn.call(tool, args, timeout), timeout=timeout + self.settings.connect_timeout + 10)
            except ServerToolError as exc:
                raise ToolError(f"MCP server {server!r}, tool {tool!r}: {exc.message}") from exc
            except (ServerDown, TimeoutError) as exc:
                reason = exc.message if isinstance(exc, ServerDown) else f"no answer within {timeout:g} s"
                self.next_try.pop(server, None)  # retry at the next step
                log.warning("agent %s: MCP server %s degraded: %s", self.agent, server, reason)
                if self.on_degraded is not None:
                    self.on_degraded(server, reason)
                raise ToolError(f"MCP server {server!r} is unavailable: {reason}") from exc
            return format_result(result)

        return call
