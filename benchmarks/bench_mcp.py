"""MCP tool calls and delegation through the whole system, against their direct counterparts.

1. MCP tool call: the `echo` tool of a real `mcp` SDK server (SSE, own process) called
   (a) directly with the SDK's client session from this process, and (b) by an agent: a sync chat
   whose model calls `sse_echo` minus, in the same iteration, a sync chat whose model calls the
   local `read_file` (same model calls and events, so the difference is the MCP call inside a run:
   the worker's client on its asyncio loop, the result stored). The three run back to back in
   every iteration, so the machine's noise hits each alike.
2. Delegation: a sync chat to `boss-agent` whose model delegates to `helper-agent` (a child on the
   other worker) and relays its answer, vs a plain sync chat to `helper-agent`. The delegated chat
   makes two more model calls (the boss's tool call and its final answer); the table shows both.

Two workers, one web, the fake LLM in this process (it scripts tool calls), a private Redis.

    .venv/bin/python -m benchmarks.bench_mcp [--quick] [--n 100]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from benchmarks.common import Table, machine, p50, pct, show, spawn
from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall
from tests.harness.mcp_server import McpServerProc
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer


def script(req: RecordedRequest) -> Reply:
    """`sse_echo` on "mcp …", `read_file` on "local …", delegation on "ask …", a short answer
    after a tool result, else echo."""
    msgs = req.messages
    if msgs[-1]["role"] == "tool":
        return Reply(text=f"done: {msgs[-1]['content'][:40]}")
    text = req.last_user_text
    if text.startswith("mcp"):
        return Reply(tool_calls=[ToolCall("sse_echo", {"text": text})])
    if text.startswith("local"):
        return Reply(tool_calls=[ToolCall("read_file", {"path": "/absent.txt"})])
    if text.startswith("ask"):
        return Reply(tool_calls=[ToolCall("delegate", {"agentType": "helper-agent", "message": text})])
    return Reply(text=f"echo: {text}")


def mcp_ab(api: httpx.Client, iid: str, url: str, n: int) -> tuple[list[float], list[float], list[float]]:
    """Per iteration, back to back: one direct SDK call of `echo` (a session kept open on this
    process's background loop), a sync chat whose model calls `sse_echo`, and one whose model
    calls the local `read_file` (same model calls, a tool that costs next to nothing)."""
    from regina.definitions import McpServer
    from regina.mcp.connection import ServerConnection
    from regina.outbound import Allowlist
    from regina.runtime.aio import run_coro

    conn = ServerConnection(McpServer(name="sse", transport="sse", url=url), Allowlist.parse(["127.0.0.1"]), 10)
    run_coro(conn.open())
    direct, with_mcp, with_local = [], [], []
    try:
        for i in range(n + 5):
            t0 = time.perf_counter()
            run_coro(conn.call("echo", {"text": f"mcp {i}"}, 30))
            t1 = time.perf_counter()
            api.post(f"/instances/{iid}/chat", json={"message": f"mcp {i}"}).raise_for_status()
            t2 = time.perf_counter()
            api.post(f"/instances/{iid}/chat", json={"message": f"local {i}"}).raise_for_status()
            t3 = time.perf_counter()
            if i >= 5:
                direct.append(t1 - t0)
                with_mcp.append(t2 - t1)
                with_local.append(t3 - t2)
    finally:
        run_coro(conn.close())
    return direct, with_mcp, with_local


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


def run(quick: bool = False, n: int = 100) -> list[Table]:
    """Both tables (`python -m benchmarks --only mcp` calls this)."""
    n = 20 if quick else n
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
            direct, with_mcp, with_local = mcp_ab(api, spawn(api, "mcp-agent"), mcp.url, n)
            in_run = [m - loc for m, loc in zip(with_mcp, with_local, strict=True)]
            helper = spawn(api, "helper-agent")
            boss = spawn(api, "boss-agent")
            plain = chats(api, helper, "plain", n)
            delegated = chats(api, boss, "ask", n)
            cols = ["path", "n", "p50 ms", "p99 ms", "added p50 ms", "ratio p50"]
            conditions: dict[str, Any] = {**machine(), "workers": 2, "transport": "sse"}
            t1 = Table("MCP tool call: in a run vs the SDK called directly", cols, conditions=conditions)
            row(t1, "SDK call_tool on an open session (direct)", direct)
            row(t1, "sync chat, model calls read_file (local tool)", with_local)
            row(t1, "sync chat, model calls sse_echo (MCP tool)", with_mcp, with_local)
            row(t1, "MCP call inside a run (chat with MCP - chat with read_file)", in_run, direct)
            t2 = Table("Delegation round trip vs a plain chat", cols, conditions=conditions)
            row(t2, "plain sync chat (helper-agent)", plain)
            row(t2, "sync chat delegating to helper-agent", delegated, plain)
            t2.notes.append("the delegating chat makes 3 model calls (boss tool call, helper answer, boss relay)")
            return [t1, t2]
    finally:
        cluster.stop()
        mcp.stop()
        fake.stop()
        server.close()


def main() -> list[Table]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    return show(run(args.quick, args.n))


if __name__ == "__main__":
    main()
