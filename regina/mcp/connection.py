"""One instance's connection to one MCP server, living on the worker's asyncio loop.

The SDK's transports and sessions are anyio task groups: they must be entered and left by the
same task. So each connection is one long-lived task (`_run`) that connects, initializes, lists
the tools, then waits until it is told to stop; tool calls are made from other tasks through its
session. When the task ends on its own (the server went away) the connection is down and
`error` says why; `open()` starts a fresh task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx2
import mcp_types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from regina.definitions import McpServer
from regina.errors import ReginaError
from regina.outbound import Allowlist
from regina.outbound_http import check_url, guarded_client

log = logging.getLogger("regina.mcp")

#: Seconds an SSE stream may stay silent before the client gives up on it (servers ping).
SSE_READ_TIMEOUT = 300.0


class ServerDown(ReginaError):
    """The server cannot be reached (connect failed, refused by the SSRF guard, or it dropped)."""


class ServerToolError(ReginaError):
    """The server answered a tool call with an MCP error (the connection is fine)."""


def describe(exc: BaseException) -> str:
    """A one-line reason, looking inside the exception groups anyio raises."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ReginaError):
        return exc.message
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServerConnection:
    """A connection to one MCP server on behalf of one instance."""

    def __init__(self, server: McpServer, allow: Allowlist, connect_timeout: float) -> None:
        self.server = server
        self.allow = allow
        self.connect_timeout = connect_timeout
        self.tools: list[types.Tool] = []
        self.error: str | None = None
        self.stale = False
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    @property
    def up(self) -> bool:
        """True while connected (the connection task runs and the session is initialized)."""
        return self._session is not None and self._task is not None and not self._task.done()

    async def open(self) -> None:
        """Connect, initialize and list the tools; ServerDown with the reason when that fails."""
        await self.close()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready, self._stop), name=f"mcp-{self.server.name}")
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout)
        except TimeoutError:
            await self.close()
            raise ServerDown(f"no answer within {self.connect_timeout:g} s") from None
        except ServerDown:
            await self.close()
            raise
        self.error = None

    async def close(self) -> None:
        """Leave the session and the transport (a no-op when not connected)."""
        task, stop = self._task, self._stop
        self._task = self._stop = None
        self._session = None
        if task is None or stop is None:
            return
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        except BaseException:  # the task's own failure is already recorded in `error`
            pass

    async def _run(self, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        try:
            await check_url(self.server.url, self.allow)
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write, message_handler=self._on_message))
                await session.initialize()
                self.tools = await _list_tools(session)
                self.stale = False
                self._session = session
                ready.set_result(None)
                await stop.wait()
        except BaseException as exc:
            reason = describe(exc)
            if not ready.done():
                ready.set_exception(ServerDown(reason))
            elif not stop.is_set():
                self.error = reason
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._session = None
            if not ready.done():
                ready.set_exception(ServerDown(self.error or "connection closed"))

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        headers = dict(self.server.headers)  # `${VAR}` was expanded when the definition loaded
        timeout = httpx2.Timeout(self.connect_timeout, read=SSE_READ_TIMEOUT)
        if self.server.transport == "sse":
            factory = functools.partial(guarded_client, self.allow)
            async with sse_client(
                self.server.url,
                headers=headers,
                timeout=self.connect_timeout,
                sse_read_timeout=SSE_READ_TIMEOUT,
                httpx_client_factory=factory,
            ) as streams:
                yield streams[0], streams[1]
        else:
            async with guarded_client(self.allow, headers=headers, timeout=timeout) as client:
                async with streamable_http_client(self.server.url, http_client=client) as streams:
                    yield streams[0], streams[1]

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            # The transport failed (stream dropped): end the connection so calls fail fast.
            self.error = describe(message)
            if self._stop is not None:
                self._stop.set()
        elif isinstance(message, types.ToolListChangedNotification):
            self.stale = True

    async def refresh_tools(self) -> None:
        """List the tools again (after a list-changed notification)."""
        session = self._session
        if session is not None and self.up:
            self.tools = await _list_tools(session)
            self.stale = False

    async def call(self, name: str, args: dict[str, Any], timeout: float) -> types.CallToolResult:
        """Call one tool; ServerDown when the connection is (or goes) away, ServerToolError for
        an MCP error answer. Waits at most `timeout` seconds."""
        session, task = self._session, self._task
        if session is None or task is None or task.done():
            raise ServerDown(self.error or "not connected")
        call = asyncio.ensure_future(session.call_tool(name, args, read_timeout_seconds=timeout))
        done, _ = await asyncio.wait({call, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            try:
                return call.result()
            except MCPError as exc:
                if exc.code != CONNECTION_CLOSED:
                    raise ServerToolError(describe(exc)) from exc
                raise self._down(describe(exc)) from exc
            except Exception as exc:
                raise self._down(describe(exc)) from exc
        call.cancel()
        with contextlib.suppress(BaseException):
            await call
        if task.done():
            raise self._down(self.error or "connection closed")
        raise ServerToolError(f"no answer from tool {name!r} within {timeout:g} s")

    def _down(self, reason: str) -> ServerDown:
        """Mark the connection down (its task ends; the next step reconnects)."""
        self.error = reason
        if self._stop is not None:
            self._stop.set()
        return ServerDown(reason)


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools
