"""Time to first stream event through the system vs from the fake LLM directly; relay throughput.

1. TTFE: POST /instances/<id>/chat/stream until the first NDJSON line, vs a raw httpx streamed
   POST of the same OpenAI request (system + user + the worker's 4 tool schemas) until the
   first SSE `data:` chunk. Interleaved per iteration.
2. Relay throughput of one web process: a run's events are written straight into Redis (run
   record + stream `regina:run:<id>:events`, ids "0-<seq>", 50 000 text-deltas + finish) and
   read back through GET /runs/<id>/events with httpx streaming; events/s at the client.

    .venv/bin/python -m benchmarks.bench_stream [--quick]
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from typing import Any

import httpx

from benchmarks.bench_chat import SYSTEM_PROMPT, worker_tool_schemas
from benchmarks.common import Table, machine, p50, pct, redis_version, show, spawn, stack

TARGET_TTFE_OVERHEAD, TARGET_EVENTS_PER_S = 3.0, 10_000


def _write_run(r: Any, instance_id: str, n_events: int) -> str:
    run_id = "run-bench-" + secrets.token_hex(8)
    key = f"regina:run:{run_id}:events"
    r.hset(
        f"regina:run:{run_id}",
        mapping={
            "instanceId": instance_id,
            "status": "done",
            "createdAt": repr(time.time()),
            "finishedAt": repr(time.time()),
        },
    )
    pipe = r.pipeline(transaction=False)
    for seq in range(1, n_events + 1):
        ev = {"type": "text-delta", "textDelta": f"tok{seq} ", "seq": seq, "runId": run_id}
        pipe.xadd(key, {"e": json.dumps(ev, separators=(",", ":"))}, id=f"0-{seq}")
        if seq % 5000 == 0:
            pipe.execute()
    fin = {
        "type": "finish",
        "finishReason": "stop",
        "text": "…",
        "seq": n_events + 1,
        "runId": run_id,
        "usage": {"promptTokens": 1, "completionTokens": n_events},
    }
    pipe.xadd(key, {"e": json.dumps(fin, separators=(",", ":"))}, id=f"0-{n_events + 1}")
    pipe.expire(key, 3600)
    pipe.expire(f"regina:run:{run_id}", 3600)
    pipe.execute()
    return run_id


#: Pause after each system request so its trailing work (acknowledgement, idle-timer touch, task
#: events) does not compete with the next direct request on this 2-core machine.
SETTLE = 0.01


def run(quick: bool = False, root: str | None = None) -> list[Table]:
    n = 60 if quick else 300
    warmup = 10 if quick else 30
    n_events = 10_000 if quick else 50_000
    reps = 2 if quick else 3
    tables: list[Table] = []
    with stack(None, root) as st:
        direct = httpx.Client(base_url=st.fake_url, timeout=30)
        headers = {"Authorization": "Bearer sk-test"}
        tools = worker_tool_schemas()
        try:
            with st.client() as api:
                pool = [spawn(api) for _ in range((n + warmup) // 10 + 1)]
                sys_t: list[float] = []
                dir_t: list[float] = []
                sys_spread: list[float] = []
                dir_spread: list[float] = []
                for i in range(warmup + n):
                    # The fake model echoes "echo: <message>" one word per chunk: 20 text deltas.
                    msg = f"stream benchmark {i} " + " ".join(["word"] * 16)
                    body = {
                        "model": "gpt-4o",
                        "stream": True,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": msg}],
                        "tools": tools,
                    }
                    t0 = time.perf_counter()
                    first = None
                    last_data = 0.0
                    with direct.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: ") and '"content"' in line:
                                last_data = time.perf_counter() - t0
                                if first is None:
                                    first = last_data
                    assert first is not None
                    t0 = time.perf_counter()
                    first_sys = None
                    last_delta = 0.0
                    last: dict[str, Any] = {}
                    with api.stream(
                        "POST", f"/instances/{pool[i % len(pool)]}/chat/stream", json={"message": msg}
                    ) as r:
                        for line in r.iter_lines():
                            if not line:
                                continue
                            if first_sys is None:
                                first_sys = time.perf_counter() - t0
                            last = json.loads(line)
                            if last.get("type") == "text-delta":
                                last_delta = time.perf_counter() - t0
                    if last.get("type") != "finish" or first_sys is None:
                        raise RuntimeError(f"stream did not finish: {last}")
                    time.sleep(SETTLE)  # the run's trailing work (ack, touch) ends before the next request
                    if i >= warmup:
                        dir_t.append(first)
                        sys_t.append(first_sys)
                        dir_spread.append(last_data - first)
                        sys_spread.append(last_delta - first_sys)
                t = Table(
                    "Time to first stream event (ms)",
                    ["path", "p50", "p99"],
                    conditions={**machine(), "redis": redis_version(st.redis.url), "N": n, "warm-up": warmup},
                )
                t.add("system: POST …/chat/stream, first NDJSON line", p50(sys_t), pct(sys_t, 99))
                t.add("direct: raw httpx stream, first SSE data chunk", p50(dir_t), pct(dir_t, 99))
                t.add("overhead (system − direct)", p50(sys_t) - p50(dir_t), pct(sys_t, 99) - pct(dir_t, 99))
                t.add("system: last of 20 text-deltas − first", p50(sys_spread), pct(sys_spread, 99))
                t.add("direct: last of 20 content chunks − first", p50(dir_spread), pct(dir_spread, 99))
                ov = p50(sys_t) - p50(dir_t)
                t.notes.append(
                    f"overhead p50 {ov:+.2f} ms: target ≤ {TARGET_TTFE_OVERHEAD:g} ms "
                    f"({'meets' if ov <= TARGET_TTFE_OVERHEAD else 'MISSES'}); original Node: +6.5 ms"
                )
                t.notes.append(
                    "the system's first line is the first text-delta the worker publishes (no "
                    "earlier 'start' event); it needs the whole LiteLLM request path first"
                )
                tables.append(t)

                # Relay throughput.
                r = st.redis_client()
                rates = []
                for _ in range(reps):
                    run_id = _write_run(r, pool[0], n_events)
                    count = 0
                    t0 = time.perf_counter()
                    with api.stream("GET", f"/runs/{run_id}/events") as resp:
                        resp.raise_for_status()
                        for line in resp.iter_lines():
                            if line:
                                count += 1
                    dt = time.perf_counter() - t0
                    if count != n_events + 1:
                        raise RuntimeError(f"relay gave {count} events, expected {n_events + 1}")
                    rates.append(count / dt)
                    r.delete(f"regina:run:{run_id}:events", f"regina:run:{run_id}")
                r.close()
                tr = Table(
                    "Relay throughput of one web process: GET /runs/<id>/events",
                    ["events per run", "runs", "median events/s", "min events/s", "max events/s"],
                    conditions={
                        "web": "1 gunicorn gevent worker",
                        "client": "httpx streaming iter_lines",
                        "event": "text-delta ≈ 80 bytes JSON",
                    },
                )
                rates.sort()
                tr.add(n_events + 1, reps, rates[len(rates) // 2], rates[0], rates[-1])
                med = rates[len(rates) // 2]
                tr.notes.append(
                    f"target ≥ {TARGET_EVENTS_PER_S:,}/s ({'meets' if med >= TARGET_EVENTS_PER_S else 'MISSES'})"
                )
                tables.append(tr)
        finally:
            direct.close()
    return tables


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_stream")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--root", help="run the web and worker from this checkout (an A/B against an older commit)")
    args = ap.parse_args(argv)
    tables = run(args.quick, args.root)
    return show(tables)


if __name__ == "__main__":
    main()
