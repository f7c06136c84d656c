"""What the parts of a chat's path cost on this machine before Regina adds anything (the floor).

A sync chat crosses: client → web (HTTP into gunicorn + Flask) → Redis → worker (BRPOP wake-up)
→ model (HTTP) → Redis → web (XREAD wake-up) → client. This benchmark times each kind of hop on
its own, interleaved per iteration in one run, so the added-latency target of bench_chat can be
read against what the chosen stack needs at the least:

- `raw`: the chat's model request straight to the fake LLM (httpx POST) — bench_chat's baseline;
- `web hop`: `GET /agents/openai-agent` through `regina web` (gunicorn gevent + Flask, answered
  from memory, no Redis);
- `redis rtt`: one PING from this process;
- `redis hop ×2`: LPUSH to a list another process BRPOPs, which LPUSHes back (two
  cross-process wake-ups: web → worker and worker → web each take one);
- `model call, direct route`: the same request through regina.runtime.models.direct in this
  process (what the worker runs) and `litellm.completion` for comparison.

    .venv/bin/python -m benchmarks.bench_floor [--n 300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from benchmarks.common import Table, machine, p50, pct, redis_version, show, stack
from tests.harness.lifeline import die_with_parent

_ECHO = """
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
while True:
    item = r.brpop("floor:in", timeout=5)
    if item is None:
        break
    r.lpush("floor:out", item[1])
"""


def run(n: int = 300) -> list[Table]:
    from regina.providers import ModelTarget
    from regina.runtime.models import call_completion, get_litellm
    from regina.runtime.tools.files import file_tools
    from regina.vfs.memory import MemoryVFS

    litellm = get_litellm()
    tools = [t.schema() for t in file_tools(MemoryVFS()).values()]
    messages = [{"role": "system", "content": "You are a test agent."}, {"role": "user", "content": "hello floor"}]
    with stack() as st, st.client() as api, httpx.Client(timeout=30) as raw_client:
        base = st.fake_url + "/v1"
        body = {"model": "gpt-4o", "messages": messages, "tools": tools}
        target = ModelTarget(provider="openai", litellm_model="openai/gpt-4o", api_key="k", api_base=base)
        r = redis.Redis.from_url(st.redis.url)
        echo = subprocess.Popen([sys.executable, "-c", _ECHO, st.redis.url], preexec_fn=die_with_parent)

        def hop() -> None:
            r.lpush("floor:in", b"x")
            r.brpop("floor:out", timeout=5)

        paths: dict[str, Callable[[], Any]] = {
            "raw httpx POST to the model": lambda: raw_client.post(base + "/chat/completions", json=body).json(),
            "web hop: GET /agents/openai-agent through regina web": lambda: api.get(
                "/agents/openai-agent"
            ).raise_for_status(),
            "redis rtt: PING": r.ping,
            "redis hop ×2: LPUSH → other process BRPOP → LPUSH back": hop,
            "model call, direct route (provider_http, in-process)": lambda: list(
                call_completion(target, messages, tools)
            ),
            "model call, litellm.completion (in-process)": lambda: litellm.completion(
                model="openai/gpt-4o", messages=messages, tools=tools, api_key="k", api_base=base, max_retries=0
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in paths}
        # litellm.completion leaves logging work on background threads: it runs in its own loop,
        # after the others, so that work never competes with another row's request.
        later = "model call, litellm.completion (in-process)"
        try:
            for rows in ([k for k in paths if k != later], [later]):
                for i in range(n + 30):
                    for name in rows:
                        t0 = time.perf_counter()
                        paths[name]()
                        if i >= 30:
                            times[name].append(time.perf_counter() - t0)
        finally:
            echo.kill()
            echo.wait()
            r.close()
        t = Table(
            "Floor: what each kind of hop costs on this machine (ms)",
            ["path", "p50", "p99"],
            conditions={**machine(), "redis": redis_version(st.redis.url), "N": n, "warm-up": 30},
        )
        for name, xs in times.items():
            t.add(name, p50(xs), pct(xs, 99))
        raw = p50(times["raw httpx POST to the model"])
        web = p50(times["web hop: GET /agents/openai-agent through regina web"])
        hops = p50(times["redis hop ×2: LPUSH → other process BRPOP → LPUSH back"])
        model = p50(times["model call, direct route (provider_http, in-process)"])
        floor = web + hops + max(0.0, model - raw)
        t.notes.append(
            f"a sync chat needs at least one web hop, two cross-process Redis hops and one model call: "
            f"≈ {web:.2f} + {hops:.2f} + max(0, {model:.2f} − {raw:.2f}) = {floor:.2f} ms over the raw model request "
            f"before any of Regina's own work (run record, fencing, history, events); target ≤ 3 ms"
        )
        return [t]


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_floor")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args(argv)
    tables = run(args.n)
    return show(tables)


if __name__ == "__main__":
    main()
