"""A real MCP server built with the `mcp` SDK, run as its own process for tests and benchmarks.

``python -m tests.harness.mcp_server --transport sse|http --port N [--require-header K=V]``
serves tools ``echo``, ``add`` (structured result), ``pixel`` (an image), ``nap`` (answers after a
pause, to be killed mid-call) and ``add_tool`` (adds a tool ``extra_<name>`` and tells clients the
tool list changed) on 127.0.0.1. With
``--require-header`` every request lacking that header value gets 401. `McpServerProc` starts it
on a free port, waits until it accepts connections, and stops or kills it.
"""

from __future__ import annotations

import argparse
import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from starlette.responses import JSONResponse

from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

# A 1x1 transparent PNG.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def build_app(transport: str, required: tuple[str, str] | None) -> Any:
    """The Starlette app of an MCPServer with the test tools (header check when asked)."""
    server: MCPServer = MCPServer("regina-test", log_level="WARNING")

    @server.tool(description="Echo the text back, prefixed with 'echo: '")
    def echo(text: str) -> str:
        return f"echo: {text}"

    @server.tool(description="Add two integers")
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @server.tool(description="A tiny PNG image")
    def pixel() -> Image:
        return Image(data=PIXEL, format="png")

    @server.tool(description="A text of `size` characters")
    def blob(size: int) -> str:
        return "x" * size

    @server.tool(description="Answer 'rested' after the given number of seconds")
    async def nap(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "rested"

    @server.tool(description="Add a tool named extra_<name> that returns its name")
    async def add_tool(name: str, ctx: Context) -> str:
        def extra() -> str:
            return f"extra {name}"

        server.add_tool(extra, name=f"extra_{name}", description=f"Extra tool {name}")
        await ctx.session.send_tool_list_changed()
        return f"added extra_{name}"

    app = server.sse_app() if transport == "sse" else server.streamable_http_app()
    if required is None:
        return app
    key, value = required

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            if headers.get(key.lower()) != value:
                await JSONResponse({"error": f"missing or wrong {key}"}, status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["sse", "http"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--require-header", default=None, help="NAME=VALUE every request must carry")
    args = parser.parse_args()
    required = tuple(args.require_header.split("=", 1)) if args.require_header else None
    import uvicorn

    app = build_app(args.transport, required)  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


class McpServerProc:
    """One MCP server process on a free 127.0.0.1 port."""

    def __init__(self, transport: str, require_header: str | None = None, port: int | None = None) -> None:
        self.transport = transport
        self.port = port or free_port()
        self.require_header = require_header
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint a client connects to."""
        return f"http://127.0.0.1:{self.port}" + ("/sse" if self.transport == "sse" else "/mcp")

    def start(self, timeout: float = 30) -> McpServerProc:
        argv = [sys.executable, "-m", "tests.harness.mcp_server", "--transport", self.transport]
        argv += ["--port", str(self.port)]
        if self.require_header:
            argv += ["--require-header", self.require_header]
        self.proc = subprocess.Popen(argv, cwd=ROOT, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MCP server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"MCP server on port {self.port} did not start within {timeout} s")

    def kill(self) -> None:
        """kill -9: connections drop mid-stream."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> McpServerProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
