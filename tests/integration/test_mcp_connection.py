"""One MCP connection against a real `mcp` SDK server that dies and comes back (SSE and HTTP).

No cluster: `ServerConnection` on this test's own asyncio loop, the server a real process that
is killed (kill -9) and restarted on the same port. What the worker's tools rely on: a dead
connection is replaced at the next call, a failure reports its own reason (never an older
connection's), and a call is made again only when its request cannot have reached the server.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Iterator

import pytest

from regina.definitions import McpServer
from regina.mcp.connection import ServerConnection, ServerDown, ServerToolError
from regina.outbound import Allowlist
from tests.harness.mcp_server import McpServerProc

pytestmark = pytest.mark.chaos


@pytest.fixture(params=["sse", "http"])
def server(request: pytest.FixtureRequest) -> Iterator[McpServerProc]:
    proc = McpServerProc(request.param).start()
    yield proc
    proc.stop()


def connect(server: McpServerProc) -> ServerConnection:
    spec = McpServer(name="s", transport=server.transport, url=server.url)  # type: ignore[arg-type]
    return ServerConnection(spec, Allowlist.parse(["127.0.0.1"]), connect_timeout=5)


async def echo(conn: ServerConnection, text: str) -> str:
    result = await conn.call("echo", {"text": text}, timeout=10)
    return str(result.content[0].text)  # type: ignore[union-attr]


def test_a_dead_connection_is_replaced_and_each_failure_says_why(server: McpServerProc) -> None:
    # The server is killed and started from a thread: the connection's loop keeps running and sees
    # what happens on the wire as it happens (as on a worker, whose loop never waits for a test).
    kill = functools.partial(asyncio.to_thread, server.kill)
    start = functools.partial(asyncio.to_thread, server.start)

    async def scenario() -> None:
        conn = connect(server)
        await conn.open()
        try:
            assert await echo(conn, "one") == "echo: one"

            # Killed while running a tool: the request reached it, so no second call, and the
            # model is told the tool may have run.
            nap = asyncio.create_task(conn.call("nap", {"seconds": 5}, timeout=10))
            await asyncio.sleep(0.7)
            await kill()
            with pytest.raises(ServerDown) as down:
                await nap
            assert "the tool may have run" in down.value.message, down.value.message

            # Still down: the failure is this attempt's (nothing listens), not the old stream's.
            with pytest.raises(ServerDown) as down:
                await echo(conn, "lost")
            assert down.value.message.startswith("ConnectError"), down.value.message
            assert not conn.up

            await start()  # same port
            assert await echo(conn, "back") == "echo: back"

            # Restarted between two calls: SSE sees its stream end; streamable HTTP keeps a
            # session the new server never knew (404). Either way the next call reconnects, and
            # two calls at once share the one new connection.
            await kill()
            await start()
            assert await asyncio.gather(echo(conn, "a"), echo(conn, "b")) == ["echo: a", "echo: b"]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_frozen_server_is_taken_for_down_and_a_slow_tool_is_not(server: McpServerProc) -> None:
    """A server that stops answering but keeps its connection open (frozen, SIGSTOP; a network
    that drops packets) is down, not a slow tool: the call that finds it out says the tool may
    have run and the connection is replaced at the next call. A slow tool on a server that still
    answers a ping stays a tool error on a kept connection."""
    assert server.proc is not None
    pid = server.proc.pid

    async def scenario() -> None:
        spec = McpServer(name="s", transport=server.transport, url=server.url)  # type: ignore[arg-type]
        conn = ServerConnection(spec, Allowlist.parse(["127.0.0.1"]), connect_timeout=1)
        await conn.open()
        try:
            with pytest.raises(ServerToolError, match="no answer from tool 'nap' within 0.5 s"):
                await conn.call("nap", {"seconds": 3}, timeout=0.5)
            assert conn.up
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(ServerDown, match="may have run: no answer .* nor to a ping within 1 s"):
                    await conn.call("echo", {"text": "frozen"}, timeout=0.5)
                assert not conn.up
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await echo(conn, "back") == "echo: back"  # a new connection
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_closed_toolset_connects_no_more(server: McpServerProc) -> None:
    """A step still running as its instance is dropped asks for its next step's tools after the
    close: it gets none, and nothing connects (a connection then would never be closed)."""
    from regina.config import McpSettings
    from regina.mcp.toolset import McpToolset

    spec = McpServer(name="s", transport=server.transport, url=server.url)  # type: ignore[arg-type]
    settings = McpSettings(connect_timeout=5, retry_interval=0)
    toolset = McpToolset("a", [spec], settings, Allowlist.parse(["127.0.0.1"]))
    toolset.open()
    assert toolset.conns["s"].up and toolset.tools()
    toolset.close()

    assert toolset.tools() == {}
    assert not toolset.conns["s"].up


def test_a_result_of_megabytes_is_a_result_not_a_dropped_connection(server: McpServerProc) -> None:
    """The SDK's streamable-HTTP client refused events over 1 MiB and closed the stream: a
    healthy server's big result looked like a dropped server (the tool may have run)."""
    if server.transport == "sse":
        pytest.skip("the SDK's SSE client has a fixed 1 MiB message limit (README: prefer http)")

    async def scenario() -> None:
        conn = connect(server)
        await conn.open()
        try:
            result = await conn.call("blob", {"size": 3_000_000}, timeout=30)
            assert len(result.content[0].text) == 3_000_000  # type: ignore[union-attr]
            assert await echo(conn, "still up") == "echo: still up"
        finally:
            await conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_server_that_never_answers_costs_connect_timeout_not_more(transport: str) -> None:
    """A connection attempt still connecting is cancelled at once when it is given up (it waited
    5 s more for a polite close): every step that retries a hung server paid for it."""
    import socket
    import time

    with socket.socket() as hole:  # accepts connections (the kernel's backlog), never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/" + ("sse" if transport == "sse" else "mcp")
        spec = McpServer(name="hole", transport=transport, url=url)  # type: ignore[arg-type]
        conn = ServerConnection(spec, Allowlist.parse(["127.0.0.1"]), connect_timeout=1)

        async def scenario() -> float:
            started = time.monotonic()
            with pytest.raises(ServerDown, match="no answer within 1 s"):
                await conn.open()
            took = time.monotonic() - started
            await conn.close()
            return took

        assert asyncio.run(scenario()) < 2.5
