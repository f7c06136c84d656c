"""One instance's connection to one MCP server, living on the worker's asyncio loop.

The SDK's transports and sessions are anyio task groups: they must be entered and left by the
same task. So each connection attempt (`regina.mcp.wire.Attempt`) is one long-lived task
(`_run`) that connects, initializes, lists the tools, then waits until it is stopped; tool calls
are made from other tasks through its session. An attempt ends when it is closed, when its
transport ends, or when the wire shows the server gone; `open()` and `call()` then start a fresh
one. Each attempt keeps its own reason for ending, so an old connection's error is never
reported for a new one.
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
from regina.mcp.wire import Attempt, CallTrace, ObservedTransport, WatchedReads, describe
from regina.outbound import Allowlist
from regina.outbound_http import check_url, guarded_client

log = logging.getLogger("regina.mcp")

#: Seconds an SSE stream may stay silent before the client gives up on it (servers ping).
SSE_READ_TIMEOUT = 300.0
#: Largest message a streamable-HTTP server may send (a tool's result): the SDK's default of
#: 1 MiB made a healthy server's bigger result look like a dropped connection (the tool "may
#: have run", the server degraded); what reaches the model is cut to limits.maxToolOutputChars.
MAX_MESSAGE_BYTES = 64 << 20


class ServerDown(ReginaError):
    """The server cannot be reached (connect failed, refused by the SSRF guard, or it dropped)."""


class ServerToolError(ReginaError):
    """The server answered a tool call with an MCP error (the connection is fine)."""


class _NotStarted(Exception):
    """The connection dropped before the call's request reached a live server."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerConnection:
    """A connection to one MCP server on behalf of one instance."""

    def __init__(self, server: McpServer, allow: Allowlist, connect_timeout: float) -> None:
        self.server = server
        self.allow = allow
        self.connect_timeout = connect_timeout
        self._tools: list[types.Tool] = []
        #: Goes up whenever the tool list is replaced: what a toolset built its tools from (an
        #: `id()` of the list would not do: a freed list's address comes back for the next one).
        self.tools_version = 0
        self.stale = False
        self._attempt: Attempt | None = None
        self._closed = False  # closed with the activation: no call may open it again
        self._lock = asyncio.Lock()  # one attempt is made at a time; the others wait and share it

    @property
    def up(self) -> bool:
        """True while connected (the attempt's task runs and nothing has ended it)."""
        return self._attempt is not None and self._attempt.live

    async def open(self) -> None:
        """Connect unless connected: initialize and list the tools; ServerDown with the reason."""
        self._closed = False
        await self._connected(self.connect_timeout)

    async def close(self) -> None:
        """Leave the session and the transport (a no-op when not connected)."""
        self._closed = True
        async with self._lock:
            await self._close()

    async def _connected(self, timeout: float) -> Attempt:
        """The live attempt, making a new one first when there is none."""
        attempt = self._attempt
        if attempt is not None and attempt.live:
            return attempt
        async with self._lock:
            attempt = self._attempt
            if attempt is not None and attempt.live:  # made while this call waited for the lock
                return attempt
            if self._closed:
                raise ServerDown("the connection was closed with the instance's activation")
            await self._close()
            return await self._connect(timeout)

    async def _connect(self, timeout: float) -> Attempt:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # read even when abandoned
        attempt = self._attempt = Attempt()
        # A fresh context: a connection made for a call must not count its own requests as the call's.
        run = self._run(attempt, ready)
        attempt.task = loop.create_task(run, name=f"mcp-{self.server.name}", context=CallTrace.cleared())
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except TimeoutError:
            await self._close()
            raise ServerDown(f"no answer within {timeout:g} s") from None
        except ServerDown:
            await self._close()
            raise
        return attempt

    async def _close(self) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is None or attempt.task is None:
            return
        attempt.stop.set()
        if attempt.session is None:  # still connecting: nothing to leave politely, do not wait for it
            attempt.task.cancel()
            with contextlib.suppress(BaseException):
                await attempt.task
            return
        try:
            await asyncio.wait_for(asyncio.shield(attempt.task), 5)
        except TimeoutError:
            attempt.task.cancel()
            with contextlib.suppress(BaseException):
                await attempt.task
        except Exception:  # the attempt's own failure is already its reason
            pass

    async def _run(self, attempt: Attempt, ready: asyncio.Future[None]) -> None:
        try:
            await check_url(self.server.url, self.allow)
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport(attempt))
                reads = WatchedReads(read, attempt)
                session = await stack.enter_async_context(ClientSession(reads, write, message_handler=self._on_message))
                await session.initialize()
                self.tools = await _list_tools(session)
                self.stale = False
                attempt.session = session
                ready.set_result(None)
                await attempt.stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(ServerDown(describe(exc)))
            attempt.lose(describe(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            attempt.lose(attempt.fault or "connection closed")  # a no-op when it was told to stop
            if not ready.done():
                ready.set_exception(ServerDown(attempt.reason or "connection closed"))

    @contextlib.asynccontextmanager
    async def _transport(self, attempt: Attempt) -> AsyncIterator[tuple[Any, Any]]:
        headers = dict(self.server.headers)  # `${VAR}` was expanded when the definition loaded
        observe = functools.partial(ObservedTransport, attempt=attempt)
        if self.server.transport == "sse":
            factory = functools.partial(guarded_client, self.allow, wrap=observe)
            async with sse_client(
                self.server.url,
                headers=headers,
                timeout=self.connect_timeout,
                sse_read_timeout=SSE_READ_TIMEOUT,
                httpx_client_factory=factory,
            ) as streams:
                yield streams[0], streams[1]
        else:
            timeout = httpx2.Timeout(self.connect_timeout, read=SSE_READ_TIMEOUT)
            async with guarded_client(self.allow, headers=headers, timeout=timeout, wrap=observe) as client:
                async with streamable_http_client(
                    self.server.url, http_client=client, max_sse_event_size=MAX_MESSAGE_BYTES
                ) as streams:
                    yield streams[0], streams[1]

    async def _on_message(self, message: IncomingMessage) -> None:
        # Transport errors are seen by the attempt's WatchedReads; here only the list changes.
        if isinstance(message, types.ToolListChangedNotification):
            self.stale = True

    @property
    def tools(self) -> list[types.Tool]:
        """The server's tools as last listed."""
        return self._tools

    @tools.setter
    def tools(self, tools: list[types.Tool]) -> None:
        self._tools = tools
        self.tools_version += 1

    async def refresh_tools(self) -> None:
        """List the tools again (after a list-changed notification), within connect_timeout: a
        server that does not answer is taken for down (ServerDown), so the next steps do not each
        wait on it again; it is reconnected after mcp.retryInterval."""
        attempt = self._attempt
        if attempt is not None and attempt.session is not None and attempt.live:
            try:
                self.tools = await asyncio.wait_for(_list_tools(attempt.session), self.connect_timeout)
            except TimeoutError:
                attempt.lose(f"listing its tools got no answer within {self.connect_timeout:g} s")
                raise ServerDown(attempt.reason or "no answer") from None
            self.stale = False

    async def call(self, name: str, args: dict[str, Any], timeout: float) -> types.CallToolResult:
        """Call one tool within `timeout` seconds.

        A connection found dead is replaced first. One that dies during the call is replaced and
        the call made once more when its request cannot have reached the server; otherwise
        ServerDown says the tool may have run. ServerToolError for an MCP error or no answer.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            return await self._call_once(name, args, deadline, timeout)
        except _NotStarted:
            try:
                return await self._call_once(name, args, deadline, timeout)
            except _NotStarted as exc:
                raise ServerDown(exc.reason) from None

    async def _call_once(
        self, name: str, args: dict[str, Any], deadline: float, timeout: float
    ) -> types.CallToolResult:
        loop = asyncio.get_running_loop()
        attempt = await self._connected(min(self.connect_timeout, max(deadline - loop.time(), 0.1)))
        trace = CallTrace()
        remaining = max(deadline - loop.time(), 0.1)
        assert attempt.session is not None and attempt.task is not None  # a live attempt has both
        request = attempt.session.call_tool(name, args, read_timeout_seconds=remaining)
        call = loop.create_task(request, context=trace.context())
        done, _ = await asyncio.wait({call, attempt.task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            try:
                return call.result()
            except Exception as exc:
                closed = isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED
                if attempt.live and not closed:
                    raise ServerToolError(describe(exc)) from exc
                attempt.lose(describe(exc))
        else:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            late = f"no answer from tool {name!r} within {timeout:g} s"
            try:
                answers = attempt.live and await self._answers_ping(attempt)
            except asyncio.CancelledError:  # the caller gave up meanwhile: still not there
                attempt.lose(f"{late}, nor to a ping")
                raise
            if answers:
                raise ServerToolError(late)  # a slow tool on a server that is there
            # A frozen or cut-off server keeps the connection open and answers nothing: taken
            # for down (degraded, replaced at the next call), not a slow tool every call waits on.
            attempt.lose(f"{late}, nor to a ping within {self.connect_timeout:g} s")
        reason = attempt.reason or "connection closed"
        if trace.may_have_run(attempt):
            raise ServerDown(f"the connection dropped during the call, so the tool may have run: {reason}")
        raise _NotStarted(reason)

    async def _answers_ping(self, attempt: Attempt) -> bool:
        """True when the server answers a ping within connect_timeout — an error reply too (a
        server without `ping` is there); False on no answer or a closed connection."""
        assert attempt.session is not None
        try:
            await asyncio.wait_for(attempt.session.send_ping(), self.connect_timeout)
        except MCPError as exc:
            return exc.code != CONNECTION_CLOSED
        except Exception:  # noqa: BLE001 - no answer or a closed session: "not there"
            return False
        return True


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
