"""MCP tool calls and delegation through the whole system, against their direct counterparts.

1. MCP tool call: the `echo` tool of a real `mcp` SDK server (SSE, own process) called
   (a) directly with the SDK's client from this process, one call after another on one session, and
   (b) by an agent in a streamed chat: the time between the `tool-call` and the `tool-result`
   events as the client receives them (the worker's MCP client on its asyncio loop, the result
   persisted, both events through Redis and the web).
2. Delegation: a sync chat to `boss-agent` whose model delegates to `helper-agent` (a child on the
   other worker) and relays its answer, vs a plain sync chat to `helper-agent`. The delegated chat
   makes two more model calls (the boss's tool call and its final answer); the table shows both.

Two workers, one web, the fake LLM in this process (it scripts tool calls), a private Redis.

    .venv/bin/python -m benchmarks.bench_mcp [--quick] [--n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from benchmarks.common import Table, machine, p50, pct, show, spawn
from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall
from tests.harness.mcp_server import McpServerProc
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer


def script(req: RecordedRequest) -> Reply:
    """Tool call on "mcp …", delegation on "ask …", relay after a tool result, else echo."""
    msgs = req.messages
    if msgs[-1]["role"] == "tool":
        return Reply(text=f"done: {msgs[-1]['content'][:40]}")
    text = req.last_user_text
    if text.startswith("mcp"):
        return Reply(tool_calls=[ToolCall("sse_echo", {"text": text})])
    if text.startswith("ask"):
        return Reply(tool_calls=[ToolCall("delegate", {"agentType": "helper-agent", "message": text})])
    return Reply(text=f"echo: {text}")


def direct_mcp(url: str, n: int) -> list[float]:
    """n sequential SDK calls of `echo` on one session."""
    from mcp.client.session import ClientSession
    from mcp.client.sse import sse_client

    async def run() -> list[float]:
        async with sse_client(url) as streams, ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            for _ in range(5):
                await session.call_tool("echo", {"text": "warm"})
            out = []
            for i in range(n):
                t0 = time.perf_counter()
                await session.call_tool("echo", {"text": f"mcp {i}"})
                out.append(time.perf_counter() - t0)
            return out

    return asyncio.run(run())


def system_mcp(api: httpx.Client, iid: str, n: int) -> list[float]:
    """tool-call → tool-result gap of `sse_echo` in n streamed chats, as the client sees it."""
    out = []
    for i in range(n + 5):
        seen: dict[str, float] = {}
        with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": f"mcp {i}"}) as resp:
            for line in resp.iter_lines():
                if line:
                    seen.setdefault(json.loads(line)["type"], time.perf_counter())
        if i >= 5:
            out.append(seen["tool-result"] - seen["tool-call"])
    return out


def chats(api: httpx.Client, iid: str, message: str, n: int) -> list[float]:
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        resp = api.post(f"/instances/{iid}/chat", json={"message": f"{message} {i}"})
        resp.raise_for_status()
        if i >= 5:
            out.append(time.perf_counter() - t0)
    return out


def row(table: Table, name: str, xs: list[float], base: list[float] | None = None) -> None:
    added = f"{p50(xs) - p50(base):+.2f}" if base else ""
    ratio = f"{p50(xs) / p50(base):.2f}x" if base else ""
    table.add(name, len(xs), p50(xs), pct(xs, 99), added, ratio)


def main() -> list[Table]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 20 if args.quick else args.n
    server = RedisServer().start()
    fake = FakeLLM().start()
    fake.default = script
    mcp = McpServerProc("sse").start()
    cluster = Cluster(
        server.url,
        fake.url,
        env_overrides={"REGINA_OUTBOUND_ALLOWLIST": "127.0.0.1", "TEST_MCP_SSE_URL": mcp.url},
    )
    try:
        w1 = cluster.start_worker(wait=False)
        w2 = cluster.start_worker(wait=False)
        cluster.wait_worker(w1)
        cluster.wait_worker(w2)
        web = cluster.start_web()
        with httpx.Client(base_url=web.url, timeout=120) as api:
            direct = direct_mcp(mcp.url, n)
            system = system_mcp(api, spawn(api, "mcp-agent"), n)
            helper = spawn(api, "helper-agent")
            boss = spawn(api, "boss-agent")
            plain = chats(api, helper, "plain", n)
            delegated = chats(api, boss, "ask", n)
            cols = ["path", "n", "p50 ms", "p99 ms", "added p50 ms", "ratio p50"]
            conditions: dict[str, Any] = {**machine(), "workers": 2, "transport": "sse"}
            t1 = Table("MCP tool call: in a run vs the SDK called directly", cols, conditions=conditions)
            row(t1, "SDK call_tool (direct)", direct)
            row(t1, "tool-call → tool-result in a streamed chat", system, direct)
            t2 = Table("Delegation round trip vs a plain chat", cols, conditions=conditions)
            row(t2, "plain sync chat (helper-agent)", plain)
            row(t2, "sync chat delegating to helper-agent", delegated, plain)
            t2.notes.append("the delegating chat makes 3 model calls (boss tool call, helper answer, boss relay)")
            return show([t1, t2])
    finally:
        cluster.stop()
        mcp.stop()
        fake.stop()
        server.close()


if __name__ == "__main__":
    main()
