"""What one connection attempt sees on the wire, so it knows at once when it is dead.

The SDK notices a dead server late or not at all: a streamable-HTTP session whose server
restarted stays "connected" and answers every call with "Session not found"; a read stream that
ends without an error tells nobody; a POST that never reached the server looks like any other
failed call. Two small observers close those gaps for one `Attempt`:

- `WatchedReads` wraps the transport's read stream: when it ends, the attempt is lost (with
  the last transport error as the reason).
- `ObservedTransport` wraps the HTTP transport: a request that cannot connect, or a 404 for a
  session the server no longer knows, loses the attempt; and for a tool call it records in that
  call's `CallTrace` whether its request may have reached a live server (else the call cannot
  have started and is safe to make again on a new connection).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx2

from regina.errors import ReginaError
from regina.outbound import OutboundRefused
from regina.secrets import redact

if TYPE_CHECKING:
    from mcp.client.session import ClientSession


def describe(exc: BaseException) -> str:
    """A one-line reason, looking inside the exception groups anyio raises; secrets redacted (an
    HTTP error names the server's URL, credentials included, and the reason reaches the model)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ReginaError):
        return exc.message
    text = redact(str(exc).strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Attempt:
    """One connection attempt: its task, its session once initialized, and why it ended.

    Everything that can end a connection ends the attempt it belongs to, never whichever one
    happens to be current: a late signal from an old attempt cannot touch a new one.
    """

    def __init__(self) -> None:
        self.session: ClientSession | None = None  # set once initialized
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.reason: str | None = None
        self.fault: str | None = None  # the last transport error seen, the reason if the stream ends
        self.forgotten = False  # the server said it does not know the session: it runs nothing of it

    @property
    def live(self) -> bool:
        """True while the session is initialized and nothing has ended the attempt."""
        return self.session is not None and not self.stop.is_set() and self.task is not None and not self.task.done()

    def lose(self, reason: str) -> None:
        """End the attempt because the connection is gone (a no-op once it is ending)."""
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()


class CallTrace:
    """What became of one tool call's request: whether a server may have started it."""

    current: contextvars.ContextVar[CallTrace | None] = contextvars.ContextVar("regina_mcp_call", default=None)

    def __init__(self) -> None:
        #: "unsent"; "pending" (sent, no answer yet, or cut off by our own teardown); "refused"
        #: (could not connect, or a 404 for an unknown session: it ran nowhere); "failed" (the
        #: connection broke after sending); "answered".
        self.state: Literal["unsent", "pending", "refused", "failed", "answered"] = "unsent"

    def may_have_run(self, attempt: Attempt) -> bool:
        """False only when the request surely ran nowhere: never sent, refused, or unanswered
        on a session its server had forgotten (a server that knew the session is gone)."""
        if self.state == "pending":
            return not attempt.forgotten
        return self.state in ("failed", "answered")

    def context(self) -> contextvars.Context:
        """A copy of the current context in which this trace is the current one.

        The SDK's write stream carries the sender's context to the task that POSTs the message,
        so `ObservedTransport` finds the trace of the call whose request it carries.
        """
        ctx = contextvars.copy_context()
        ctx.run(CallTrace.current.set, self)
        return ctx

    @staticmethod
    def cleared() -> contextvars.Context:
        """A copy of the current context with no call trace (for a connection's own task)."""
        ctx = contextvars.copy_context()
        ctx.run(CallTrace.current.set, None)
        return ctx


#: Failures that mean the request was never sent.
_NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout, OutboundRefused)


def _is_rpc_request(request: httpx2.Request) -> bool:
    """True for a POST carrying a JSON-RPC request (a method and an id), not a notification."""
    try:
        body = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return False
    return isinstance(body, dict) and "method" in body and "id" in body


def _names_session(request: httpx2.Request) -> bool:
    return "mcp-session-id" in request.headers or "session_id" in request.url.params


class ObservedTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport that reports what it sees to its attempt and to the current call."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, attempt: Attempt) -> None:
        self.inner = inner
        self.attempt = attempt

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        trace = CallTrace.current.get() if request.method == "POST" else None
        if trace is not None and not _is_rpc_request(request):
            trace = None  # e.g. the cancel notification an abandoned call sends after it
        if trace is not None:
            trace.state = "pending"
        try:
            response = await self.inner.handle_async_request(request)
        except _NOT_SENT as exc:
            if trace is not None:
                trace.state = "refused"
            if self.attempt.session is not None:  # once connected: the server went away
                self.attempt.lose(describe(exc))
            raise
        except asyncio.CancelledError:  # our own teardown: it stays "pending"
            raise
        except BaseException:
            if trace is not None:  # sent, then the connection broke: the server may have it
                trace.state = "failed"
            raise
        if response.status_code == 404 and _names_session(request):
            # The server does not know this session (it restarted): it ran nothing of it.
            self.attempt.forgotten = True
            self.attempt.lose("the server no longer knows this session (it restarted)")
            if trace is not None:
                trace.state = "refused"
        elif trace is not None:
            trace.state = "answered"
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class WatchedReads:
    """The transport's read stream; its end (or a transport error) is seen by the attempt."""

    def __init__(self, inner: Any, attempt: Attempt) -> None:
        self.inner = inner
        self.attempt = attempt

    @property
    def last_context(self) -> contextvars.Context | None:
        """The sender's context of the last item (the SDK's dispatcher reads it)."""
        return getattr(self.inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            item = await self.inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.attempt.lose(self.attempt.fault or "the server closed the connection")
            raise
        self.attempt.fault = describe(item) if isinstance(item, Exception) else None
        return item

    def __aiter__(self) -> WatchedReads:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> WatchedReads:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
