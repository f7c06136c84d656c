"""What tool isolation costs (docs/isolation.md): threads (default) vs `useProcesses`.

1. Tool-call overhead, in one process: p50 of `runner.run(tool, args)` for a no-op user tool and
   for `bash "echo hi"`, inline (the old way, on the caller's thread), in the thread pool, and in
   the instance's child process (started before timing).
2. Chat overhead through a real stack (worker + web + Redis, fake LLM in this process): p50 of a
   sync chat without tools and of one whose model calls the no-op tool once, per mode.
3. Memory per active idle instance after one tool call: worker VmRSS growth per instance, plus,
   with processes, each child's PSS (pages shared with its fork-server siblings split among them)
   and USS (its own pages).

    .venv/bin/python -m benchmarks.bench_isolation [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.common import Table, p50, rss_kb, show, spawn
from regina.config import Limits
from regina.runtime.tools.base import Tool
from regina.runtime.tools.child import ChildSpec
from regina.runtime.tools.process import ProcessRunner
from regina.runtime.tools.runner import InlineRunner, ThreadRunner, ToolRunner
from regina.runtime.tools.toolset import build_tools
from regina.vfs import open_vfs
from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer

NOOP = """
from pydantic import BaseModel

from regina.runtime.tools.base import tool


class Params(BaseModel):
    n: int = 0


@tool(description="does nothing", parameters=Params)
def noop(p: Params) -> dict:
    return {"ok": p.n}
"""

AGENT = "---\nname: {name}\nmodel: gpt-4o\ntools:\n  - ./tools/noop.py\n{extra}---\nBenchmark agent.\n"


def _agents(tmp: Path) -> Path:
    agents = tmp / "agents"
    (agents / "tools").mkdir(parents=True)
    (agents / "tools" / "noop.py").write_text(NOOP)
    (agents / "bench-threads.md").write_text(AGENT.format(name="bench-threads", extra=""))
    (agents / "bench-procs.md").write_text(AGENT.format(name="bench-procs", extra="useProcesses: true\n"))
    return agents


def _time_calls(runner: ToolRunner, tool: Tool, args: dict[str, Any], n: int) -> list[float]:
    for _ in range(20):
        runner.run(tool, args)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        runner.run(tool, args)
        out.append(time.perf_counter() - t0)
    return out


def call_table(quick: bool) -> Table:
    n = 200 if quick else 1000
    t = Table(
        "Tool-call overhead (one process, p50 of runner.run)",
        ["tool", "inline (ms)", "thread pool (ms)", "child process (ms)"],
        conditions={"calls": n, "vfs": "sqlite NORMAL"},
    )
    from regina.runtime.tools.loading import load_tool_module

    tmp = Path(tempfile.mkdtemp(prefix="regina-bench-iso-"))
    agents = _agents(tmp)
    noop_path = str(agents / "tools" / "noop.py")
    vfs = open_vfs("sqlite", "bench", str(tmp), None, "NORMAL")
    env = {"PATH": "/usr/bin", "HOME": "/", "PWD": "/"}
    noop = load_tool_module(noop_path)
    tools = build_tools(vfs, env=env, limits=Limits(), network=False, user_tools={"noop": noop})
    spec = ChildSpec("bench", "sqlite", str(tmp), None, "NORMAL", env, Limits().model_dump(), False, (noop_path,), 1024)
    threads = ThreadRunner(60)
    proc = ProcessRunner(spec, child_tools=set(tools), timeout=60, cpu_seconds=60, fallback=threads)
    runners: list[ToolRunner] = [InlineRunner(), threads, proc]
    try:
        for name, args in (("noop", {"n": 1}), ("bash", {"command": "echo hi"})):
            t.add(name, *(p50(_time_calls(r, tools[name], args, n)) for r in runners))
        proc.close()
        fresh = ProcessRunner(spec, child_tools=set(tools), timeout=60, cpu_seconds=60, fallback=threads)
        t0 = time.perf_counter()
        fresh.run(tools["noop"], {"n": 1})
        t.notes.append(f"first call of an instance (starts its child): {(time.perf_counter() - t0) * 1000:.1f} ms")
        fresh.close()
    finally:
        proc.close()
        vfs.close()
    return t


def _script(req: RecordedRequest) -> Reply:
    """Call the no-op tool once when the user says "tool", then answer."""
    if "tool" in req.last_user_text and req.messages[-1]["role"] != "tool":
        return Reply(tool_calls=[ToolCall("noop", {"n": 1})])
    return Reply(text="ok")


def chat_and_memory_tables(quick: bool) -> list[Table]:
    n = 60 if quick else 200
    n_inst = 10 if quick else 30
    chats = Table(
        "Sync chat overhead by tool isolation (p50, ms)",
        ["agent", "chat, no tool", "chat with 1 tool call", "tool step cost"],
        conditions={"chats": n, "alternating": "threads/processes", "fake LLM": "in the client process, no delay"},
    )
    mem = Table(
        "Memory per active idle instance after one tool call",
        [
            "mode",
            "instances",
            "worker RSS growth per instance (KB)",
            "child PSS each (KB)",
            "child USS each (KB)",
            "first tool chat p50 (ms)",
        ],
        conditions={"instances": n_inst},
    )
    fake = FakeLLM().start()
    fake.default = _script
    tmp = Path(tempfile.mkdtemp(prefix="regina-bench-iso-"))
    agents = _agents(tmp)
    server = RedisServer().start()
    env = {"REGINA_AGENTS_DIR": str(agents), "REGINA_IDLE_TIMEOUT": "0"}
    cluster = Cluster(server.url, fake.url, env_overrides=env)
    try:
        worker = cluster.start_worker()
        web = cluster.start_web()
        with httpx.Client(base_url=web.url, timeout=120) as api:
            ids = {a: spawn(api, a) for a in ("bench-threads", "bench-procs")}
            lat: dict[tuple[str, bool], list[float]] = {}
            for i in range(n + 10):
                for agent, iid in ids.items():
                    for tool in (False, True):
                        t0 = time.perf_counter()
                        r = api.post(f"/instances/{iid}/chat", json={"message": ("tool " if tool else "") + f"m{i}"})
                        assert r.status_code == 200, r.text
                        if i >= 10:
                            lat.setdefault((agent, tool), []).append(time.perf_counter() - t0)
            for agent in ids:
                plain, with_tool = p50(lat[(agent, False)]), p50(lat[(agent, True)])
                chats.add(agent, plain, with_tool, with_tool - plain)
            chats.notes.append("tool step cost = one more model call + the tool call + its events and persistence")
            pid = worker.popen.pid
            for agent, mode in (("bench-threads", "threads"), ("bench-procs", "processes")):
                time.sleep(1.0)
                before = rss_kb(pid)
                kids0 = {p.pid for p in psutil.Process(pid).children(recursive=True)}
                first = []
                for _ in range(n_inst):
                    iid = spawn(api, agent)
                    t0 = time.perf_counter()
                    assert api.post(f"/instances/{iid}/chat", json={"message": "tool"}).status_code == 200
                    first.append(time.perf_counter() - t0)
                time.sleep(2.0)
                after = rss_kb(pid)
                new = [p for p in psutil.Process(pid).children(recursive=True) if p.pid not in kids0]
                infos = [p.memory_full_info() for p in new]
                pss = statistics.mean(i.pss for i in infos) / 1024 if infos else 0.0
                uss = statistics.mean(i.uss for i in infos) / 1024 if infos else 0.0
                mem.add(mode, n_inst, (after - before) / n_inst, pss, uss, p50(first))
            mem.notes.append("processes: per instance ≈ worker growth + child PSS; children end at suspend")
    finally:
        cluster.stop()
        server.close()
        fake.stop()
    return [chats, mem]


def run(quick: bool = False) -> list[Table]:
    return [call_table(quick), *chat_and_memory_tables(quick)]


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    return show(run(args.quick))


if __name__ == "__main__":
    main()
