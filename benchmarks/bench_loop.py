"""Agent-loop micro-benchmarks against the fake LLM server (not part of the test suite).

1. LiteLLM overhead: p50 of our `model.complete` / `model.stream_completion` wrapper (LiteLLM
   inside) vs a raw httpx POST of the same request to the same server, non-streamed and streamed.
2. Per-tool-step overhead of `run_turn`: N-step tool loops with zero model and tool delays; the
   time spent inside the model call (our wrapper + LiteLLM + HTTP) and inside the tool is
   subtracted, leaving what the loop itself costs per step (events, persistence, bookkeeping).

    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python benchmarks/bench_loop.py [--calls 200] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from regina.providers import ModelTarget  # noqa: E402
from regina.runtime import loop as loop_mod  # noqa: E402
from regina.runtime import models as model_api  # noqa: E402
from regina.runtime.events import Event  # noqa: E402
from regina.runtime.session import Session  # noqa: E402
from regina.runtime.sink import LocalSink  # noqa: E402
from regina.runtime.tools.base import Tool  # noqa: E402
from regina.vfs import MemoryVFS, SQLiteVFS  # noqa: E402
from regina.vfs.base import VFS  # noqa: E402
from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall  # noqa: E402

MSGS = [{"role": "user", "content": "hi"}]


def p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def timed(n: int, fn: Callable[[], Any]) -> list[float]:
    for _ in range(5):  # warm up connections and caches
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _bench_provider(fake: FakeLLM, n: int, provider: str, model: str, base: str, path: str) -> None:
    target = ModelTarget(provider, model, "sk-test", base)
    client = httpx.Client(base_url=fake.url)
    if provider == "openai":
        body: dict[str, Any] = {"model": "gpt-4o", "messages": MSGS}
        headers = {"Authorization": "Bearer sk-test"}
    else:
        body = {"model": "claude-sonnet-4-5", "messages": MSGS, "max_tokens": 4096}
        headers = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}

    def raw() -> None:
        r = client.post(path, json=body, headers=headers)
        r.json()

    def raw_stream() -> None:
        sbody = {**body, "stream": True}
        if provider == "openai":
            sbody["stream_options"] = {"include_usage": True}
        with client.stream("POST", path, json=sbody, headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])

    def ours() -> None:
        model_api.complete(target, MSGS)

    def ours_stream() -> None:
        for _ in model_api.stream_completion(target, MSGS):
            pass

    r_raw, r_ours = p50(timed(n, raw)), p50(timed(n, ours))
    s_raw, s_ours = p50(timed(n, raw_stream)), p50(timed(n, ours_stream))
    print(
        f"{provider:9s} non-streamed: raw httpx {r_raw:6.2f} ms | ours+LiteLLM {r_ours:6.2f} ms "
        f"| overhead {r_ours - r_raw:+6.2f} ms ({r_ours / r_raw:4.1f}x)"
    )
    print(
        f"{provider:9s} streamed:     raw httpx {s_raw:6.2f} ms | ours+LiteLLM {s_ours:6.2f} ms "
        f"| overhead {s_ours - s_raw:+6.2f} ms ({s_ours / s_raw:4.1f}x)"
    )
    client.close()


def bench_litellm(fake: FakeLLM, n: int) -> None:
    fake.reset()
    fake.default = lambda req: Reply(text="pong from the fake model")
    print(f"== model call overhead, p50 of {n} calls (fake server, keep-alive) ==")
    for provider, model, base, path in (
        ("openai", "openai/gpt-4o", fake.url + "/v1", "/v1/chat/completions"),
        ("anthropic", "anthropic/claude-sonnet-4-5", fake.url, "/v1/messages"),
    ):
        _bench_provider(fake, n, provider, model, base, path)


class P(BaseModel):
    n: int


def bench_steps(fake: FakeLLM, steps: int, turns: int, vfs_kind: str, provider: str) -> None:
    fake.reset()
    marker = "step-bench"

    def script(req: RecordedRequest) -> Reply:
        done = sum(1 for m in req.messages if m["role"] == "tool")
        if done >= steps - 1:
            return Reply(text="done")
        return Reply(tool_calls=[ToolCall("noop", {"n": done})])

    fake.default = script
    if provider == "openai":
        target = ModelTarget("openai", "openai/gpt-4o", "sk-test", fake.url + "/v1")
    else:
        target = ModelTarget("anthropic", "anthropic/claude-sonnet-4-5", "sk-test", fake.url)

    acc = {"model": 0.0, "tool": 0.0}
    real_stream = model_api.stream_completion

    def timed_stream(*a: Any, **kw: Any) -> Iterator[model_api.ModelDelta]:
        it = real_stream(*a, **kw)
        while True:
            t0 = time.perf_counter()
            try:
                d = next(it)
            except StopIteration:
                acc["model"] += time.perf_counter() - t0
                return
            acc["model"] += time.perf_counter() - t0
            yield d

    def noop(p: P) -> dict[str, int]:
        return {"ok": p.n}

    tool = Tool(name="noop", description="does nothing", parameters=P, fn=noop)
    real_run_tool = loop_mod.run_tool

    def timed_run_tool(tools: dict[str, Tool], name: str, args: dict[str, Any], *rest: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_run_tool(tools, name, args, *rest)
        finally:
            acc["tool"] += time.perf_counter() - t0

    loop_mod.model_api.stream_completion = timed_stream  # type: ignore[assignment]
    loop_mod.run_tool = timed_run_tool  # type: ignore[assignment]
    per_step: list[float] = []
    events = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(turns):
                # synchronous=NORMAL is the default of a worker (config key vfsSynchronous).
                vfs: VFS = (
                    MemoryVFS()
                    if vfs_kind == "memory"
                    else SQLiteVFS(os.path.join(tmp, f"{i}.sqlite"), synchronous="NORMAL")
                )
                session = Session(vfs)

                def emit(ev: Event) -> None:
                    nonlocal events
                    events += 1

                acc["model"] = acc["tool"] = 0.0
                t0 = time.perf_counter()
                res = loop_mod.run_turn(
                    loop_mod.TurnSpec(target, "bench", {"noop": tool}, max_steps=steps + 5),
                    session,
                    f"{marker} {i}",
                    LocalSink(emit, run_id="bench"),
                )
                total = time.perf_counter() - t0
                assert res.error is None and res.steps == steps, res
                per_step.append((total - acc["model"] - acc["tool"]) / steps)
                vfs.close()
    finally:
        loop_mod.model_api.stream_completion = real_stream  # type: ignore[assignment]
        loop_mod.run_tool = real_run_tool
    print(
        f"{provider:9s} {vfs_kind:6s} VFS: {steps} steps x {turns} turns: loop overhead per step "
        f"p50 {p50(per_step):.3f} ms (max {max(per_step) * 1000:.3f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--turns", type=int, default=15)
    ap.add_argument("--only", choices=["litellm", "steps"], default=None)
    args = ap.parse_args()
    fake = FakeLLM().start()
    try:
        model_api.get_litellm()
        if args.only in (None, "litellm"):
            bench_litellm(fake, args.calls)
        if args.only in (None, "steps"):
            print("== per-tool-step loop overhead (excluding model and tool time) ==")
            for provider in ("openai", "anthropic"):
                for kind in ("memory", "sqlite"):
                    bench_steps(fake, args.steps, args.turns, kind, provider)
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
