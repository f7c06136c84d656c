"""Sync chat latency through the whole system vs calling the fake LLM server directly; spawn latency.

System: POST /instances/<id>/chat on `regina web` (gunicorn+gevent) → instance queue (Celery on
Redis) → `regina worker` (gevent) → LiteLLM → fake LLM (own process) → run events in Redis →
web → client. Direct: (a) a raw httpx POST of the same OpenAI request, non-streamed and
streamed (the worker streams), (b) `litellm.completion` in this process. Every iteration runs
all of them back to back, so the machine's noise hits each alike.

    .venv/bin/python -m benchmarks.bench_chat [--quick] [--n 300] [--spawn-n 100] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import Stack, Table, machine, p50, pct, redis_version, show, spawn, stack

TARGET_ADDED_P50, TARGET_ADDED_P99, TARGET_SPAWN_P50 = 3.0, 8.0, 20.0
SYSTEM_PROMPT = "You are the openai test agent."


def worker_tool_schemas() -> list[dict[str, Any]]:
    """The tool schemas the worker sends with every request of a tool-less agent (bash + file tools)."""
    from regina.config import load_settings
    from regina.runtime.tools.bash import bash_tool
    from regina.runtime.tools.files import file_tools
    from regina.vfs import MemoryVFS

    vfs, limits = MemoryVFS(), load_settings().limits
    tools = {"bash": bash_tool(vfs, env={}, limits=limits)}
    tools.update(file_tools(vfs, max_output_chars=limits.max_tool_output_chars))
    return [t.schema() for t in tools.values()]


def _direct_calls(fake_url: str) -> tuple[dict[str, Any], Any]:
    """The direct paths, each sending what the worker sends: system + user message + its 4 tools."""
    import httpx

    from regina.runtime.models import get_litellm

    litellm = get_litellm()  # configured as the worker configures it (callbacks off, no retries)
    client = httpx.Client(base_url=fake_url, timeout=30)
    headers = {"Authorization": "Bearer sk-test"}
    tools = worker_tool_schemas()

    def messages(msg: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": msg}]

    def body(msg: str, stream: bool) -> dict[str, Any]:
        b: dict[str, Any] = {"model": "gpt-4o", "messages": messages(msg), "tools": tools}
        if stream:
            b.update(stream=True, stream_options={"include_usage": True})
        return b

    def raw(msg: str) -> None:
        r = client.post("/v1/chat/completions", json=body(msg, False), headers=headers)
        r.raise_for_status()
        r.json()

    def raw_stream(msg: str) -> None:
        with client.stream("POST", "/v1/chat/completions", json=body(msg, True), headers=headers) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])

    def via_litellm(msg: str) -> None:
        litellm.completion(
            model="openai/gpt-4o",
            messages=messages(msg),
            tools=tools,
            api_base=fake_url + "/v1",
            api_key="sk-test",
            max_retries=0,
        )

    def via_litellm_stream(msg: str) -> None:
        for _ in litellm.completion(
            model="openai/gpt-4o",
            messages=messages(msg),
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
            api_base=fake_url + "/v1",
            api_key="sk-test",
            max_retries=0,
        ):
            pass

    from regina.providers import ModelTarget
    from regina.runtime.models import call_completion

    target = ModelTarget(provider="openai", litellm_model="openai/gpt-4o", api_key="sk-test", api_base=fake_url + "/v1")

    def via_direct_route(msg: str) -> None:
        list(call_completion(target, messages(msg), tools))

    def via_litellm_no_tools(msg: str) -> None:
        litellm.completion(
            model="openai/gpt-4o", messages=messages(msg), api_base=fake_url + "/v1", api_key="sk-test", max_retries=0
        )

    return {
        "raw httpx POST": raw,
        "raw httpx stream": raw_stream,
        "direct route (what the worker calls: LiteLLM provider layer)": via_direct_route,
        "litellm.completion": via_litellm,
        "litellm.completion stream": via_litellm_stream,
        "litellm.completion, no tools": via_litellm_no_tools,
    }, client.close


def _profile(st: Stack, out_dir: str, seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy record the worker and the web worker while chats run (needs py-spy in the venv)."""
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not spy:
        print("py-spy not found; `.venv/bin/pip install py-spy` to profile", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    procs = []
    for name, pid in (("worker", st.worker.popen.pid), ("web", st.web_worker_pid())):
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
            procs.append(
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-d",
                        str(seconds),
                        "-r",
                        "250",
                        "-p",
                        str(pid),
                        "-f",
                        fmt,
                        "-o",
                        os.path.join(out_dir, f"{name}.{ext}"),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    time.sleep(1.5)
    return procs


#: Pause after each system chat so its trailing work (acknowledgement, idle-timer touch, task
#: events) does not compete with the next direct call on this 2-core machine.
SETTLE = 0.01


def _measure(
    times: dict[str, list[float]],
    direct: dict[str, Any],
    system: Any,
    pool: list[str],
    n: int,
    warmup: int,
    start_profile: Any,
) -> list[subprocess.Popen[bytes]]:
    """System and raw paths interleaved per iteration; the in-process LiteLLM paths in a second
    loop, because litellm.completion leaves logging work on background threads that would compete
    with the next system call for the client's GIL and the CPU."""
    spies: list[subprocess.Popen[bytes]] = []
    beside = ("raw httpx POST", "raw httpx stream")
    for i in range(warmup + n):
        if i == warmup:
            spies = start_profile()
        msg = f"benchmark message {i}"
        for name in beside:
            t0 = time.perf_counter()
            direct[name](msg)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        system(msg, pool[i % len(pool)])
        if i >= warmup:
            times["system /chat"].append(time.perf_counter() - t0)
        time.sleep(SETTLE)  # the step's trailing work (ack, touch) ends before the next direct call
    for i in range(warmup + n):
        for name, fn in direct.items():
            if name not in beside:
                t0 = time.perf_counter()
                fn(f"benchmark message {i}")
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
    return spies


def run(
    quick: bool = False,
    n: int | None = None,
    spawn_n: int | None = None,
    profile: str | None = None,
    root: str | None = None,
) -> list[Table]:
    n = n or (60 if quick else 300)
    spawn_n = spawn_n or (30 if quick else 100)
    warmup = 10 if quick else 30
    per_instance = 10
    tables: list[Table] = []
    # BENCH_REGINA_<KEY>=… passes REGINA_<KEY>=… to the web and worker (e.g. BENCH_REGINA_TASK_EVENTS=false).
    overrides = {k.removeprefix("BENCH_"): v for k, v in os.environ.items() if k.startswith("BENCH_REGINA_")}
    with stack(overrides, root) as st:
        direct, close = _direct_calls(st.fake_url)
        conditions = {
            **machine(),
            "redis": redis_version(st.redis.url),
            "N": n,
            "warm-up": warmup,
            "web": "1 gunicorn gevent worker",
            "worker": "1 celery gevent worker",
            "fake LLM": "own process",
        }
        try:
            with st.client() as api:
                # A pool of instances, each getting ~per_instance chats, so histories stay short.
                pool = [spawn(api) for _ in range(max(1, (n + warmup) // per_instance + 1))]

                def system(msg: str, iid: str) -> None:
                    r = api.post(f"/instances/{iid}/chat", json={"message": msg})
                    if r.status_code != 200 or not r.json()["text"].startswith("echo:"):
                        raise RuntimeError(f"chat failed: {r.status_code} {r.text[:300]}")

                times: dict[str, list[float]] = {k: [] for k in ["system /chat", *direct]}
                spies = _measure(
                    times, direct, system, pool, n, warmup, lambda: _profile(st, profile, 10) if profile else []
                )
                for p in spies:
                    p.wait()

                t = Table(
                    "Sync chat latency: system vs direct to the fake LLM (ms)",
                    ["path", "p50", "p99", "system − this, p50", "system − this, p99"],
                    conditions=conditions,
                )
                t.notes.append(
                    "every direct path sends what the worker sends: system prompt, the user message "
                    "and the 4 built-in tool schemas (bash, read/write/edit_file), except the 'no "
                    "tools' row; system and raw rows interleaved per iteration, in-process LiteLLM rows "
                    "in a second loop of the same run"
                )
                sys_t = times["system /chat"]
                for name, xs in times.items():
                    added = ("", "") if name == "system /chat" else (p50(sys_t) - p50(xs), pct(sys_t, 99) - pct(xs, 99))
                    t.add(name, p50(xs), pct(xs, 99), *added)
                raw = times["raw httpx POST"]
                added50, added99 = p50(sys_t) - p50(raw), pct(sys_t, 99) - pct(raw, 99)
                t.notes.append(
                    f"added latency vs raw httpx POST: p50 {added50:+.2f} ms (target ≤ {TARGET_ADDED_P50:g}; "
                    f"{'meets' if added50 <= TARGET_ADDED_P50 else 'MISSES'}), p99 {added99:+.2f} ms (target ≤ "
                    f"{TARGET_ADDED_P99:g}; {'meets' if added99 <= TARGET_ADDED_P99 else 'MISSES'}); "
                    f"original Node system: +6.0 / +13 ms; system/direct p50 ratio {p50(sys_t) / p50(raw):.1f}x"
                )
                t.notes.append(f"{len(pool)} instances attached to the worker, ≤{per_instance + 3} chats each")
                tables.append(t)

                # Spawn latency.
                sp: list[float] = []
                for _ in range(5):
                    spawn(api)
                for _ in range(spawn_n):
                    t0 = time.perf_counter()
                    spawn(api)
                    sp.append(time.perf_counter() - t0)
                ts = Table(
                    "Spawn latency: POST /agents/openai-agent/instances (ms)",
                    ["N", "p50", "p99", "max"],
                    conditions={"N": spawn_n, "sequential": "yes", "instances already on the worker": len(pool) + 5},
                )
                ts.add(spawn_n, p50(sp), pct(sp, 99), max(sp) * 1000)
                ts.notes.append(
                    f"target p50 ≤ {TARGET_SPAWN_P50:g} ms "
                    f"({'meets' if p50(sp) <= TARGET_SPAWN_P50 else 'MISSES'}); original: 1.4 s"
                )
                tables.append(ts)

                # The same chat with more queues attached to the worker (growth with N instances).
                k = len(pool) + 5 + spawn_n
                again: list[float] = []
                for i in range(min(n, 100)):
                    t0 = time.perf_counter()
                    system(f"again {i}", pool[i % len(pool)])
                    again.append(time.perf_counter() - t0)
                tg = Table(
                    "Sync chat latency vs instances attached to the worker (ms)",
                    ["attached instances (queues)", "chats", "p50", "p99"],
                )
                tg.add(len(pool), len(sys_t), p50(sys_t), pct(sys_t, 99))
                tg.add(k, len(again), p50(again), pct(again, 99))
                tables.append(tg)
        finally:
            close()
    return tables


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_chat")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--spawn-n", type=int)
    ap.add_argument("--profile", help="directory for py-spy flamegraphs of worker and web")
    ap.add_argument("--root", help="run the web and worker from this checkout (an A/B against an older commit)")
    args = ap.parse_args(argv)
    tables = run(args.quick, args.n, args.spawn_n, args.profile, args.root)
    return show(tables)


if __name__ == "__main__":
    main()
