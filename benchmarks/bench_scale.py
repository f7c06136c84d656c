"""Instances per worker: chat overhead, worker memory and CPU as one worker holds more instances.

One stack (private Redis, fake LLM process, one `regina worker`, one `regina web`), idle
suspension off (`REGINA_IDLE_TIMEOUT=0`), so every spawned instance stays attached to the worker
(its queue consumed, its VFS parked). The benchmark fills the worker to each level with
`--threads` concurrent spawners through the API (the fill rate is spawns/s over the fill), then:

- chat: `--chats` sync chats on a new probe instance (one of the level's instances), each
  followed by the same raw POST straight to the fake LLM; overhead = system p50 − raw p50 (p99 likewise);
- memory: the worker's VmRSS, KB per instance against the first level;
- idle CPU: the worker's CPU over 5 s with nothing to do.

With `--amqp` the task queues are on the machine's RabbitMQ (`broker: amqp://…`, in a private
vhost made and deleted with rabbitmqctl, tests/harness/rabbitmq.py) and RabbitMQ's CPU per chat
is a column of its own (the machine's RabbitMQ serves nothing else during the run).

    .venv/bin/python -m benchmarks.bench_scale [--levels 10,100,1000,10000] [--quick] [--amqp] [--root DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from benchmarks.common import Table, cpu_seconds, machine, p50, pct, rss_kb, show, spawn, stack
from tests.harness.rabbitmq import RabbitVhost

TARGET_GROWTH, TARGET_KB, TARGET_FILL = 1.5, 20.0, 200.0


def _fill(url: str, count: int, threads: int) -> float:
    """Spawn `count` instances with `threads` clients; returns the seconds it took."""
    left = count
    lock = threading.Lock()

    def work() -> None:
        nonlocal left
        with httpx.Client(base_url=url, timeout=120) as api:
            while True:
                with lock:
                    if left <= 0:
                        return
                    left -= 1
                spawn(api)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(work) for _ in range(threads)]:
            f.result()
    return time.perf_counter() - t0


def _chats(api: httpx.Client, raw: httpx.Client, iid: str, n: int) -> tuple[list[float], list[float]]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    sys_t: list[float] = []
    raw_t: list[float] = []
    for i in range(n + 10):
        t0 = time.perf_counter()
        r = api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"})
        t1 = time.perf_counter()
        r.raise_for_status()
        time.sleep(0.01)  # let the step's trailing work (ack, task events) end
        t2 = time.perf_counter()
        raw.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}).raise_for_status()
        t3 = time.perf_counter()
        if i >= 10:
            sys_t.append(t1 - t0)
            raw_t.append(t3 - t2)
        time.sleep(0.005)
    return sys_t, raw_t


def _rabbit_pid() -> int:
    """The pid of the machine's RabbitMQ (its Erlang VM), for its CPU per chat."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "beam.smp":
                if b"rabbit" in (proc / "cmdline").read_bytes():
                    return int(proc.name)
        except OSError:
            continue
    raise RuntimeError("no RabbitMQ process found")


def run(
    levels: list[int], chats: int = 100, threads: int = 16, amqp: bool = False, root: str | None = None
) -> list[Table]:
    env = {"REGINA_IDLE_TIMEOUT": "0", "REGINA_TASK_EVENTS": "true", "REGINA_MEMBER_HEARTBEAT": "10"}
    env["REGINA_MEMBER_TTL"] = "30"  # deployment defaults for membership (the test harness renews every 0.5 s)
    extra = ["rabbitmq CPU / chat (ms)"] if amqp else []
    t = Table(
        "Instances per worker: sync chat overhead, worker memory, fill rate"
        + (" (task queues on RabbitMQ)" if amqp else ""),
        [
            "active idle instances",
            "chat p50 (ms)",
            "overhead p50",
            "overhead p99",
            "worker CPU / chat (ms)",
            "redis CPU / chat (ms)",
            "worker RSS (MB)",
            "KB / instance",
            "idle CPU (ms/s)",
            "fill to here (spawns/s)",
            *extra,
        ],
        conditions={
            **machine(),
            "spawn threads": threads,
            "chats per level": chats,
            "idleTimeout": 0,
            "broker": "RabbitMQ" if amqp else "Redis",
            **({"code": root} if root else {}),
        },
    )
    with ExitStack() as stack_:
        mq_pid = 0
        if amqp:
            env["REGINA_BROKER"] = stack_.enter_context(RabbitVhost()).url
            mq_pid = _rabbit_pid()
        st = stack_.enter_context(stack(env, root))
        api = stack_.enter_context(st.client())
        raw = stack_.enter_context(httpx.Client(base_url=st.fake_url, timeout=30))
        pid = st.worker.popen.pid
        have = 0
        base_rss = 0
        first: float | None = None
        for level in levels:
            took = _fill(st.web.url, level - 1 - have, threads) if level - 1 > have else 0.0
            rate = (level - 1 - have) / took if took else float("nan")
            # A fresh probe per level: its conversation (sent to the model each chat) is as long at
            # every level, so only the number of instances changes.
            probe = spawn(api)
            have = max(have, level)
            time.sleep(2.0)
            rss = rss_kb(pid)
            c0 = cpu_seconds(pid)
            time.sleep(5.0)
            idle_cpu = (cpu_seconds(pid) - c0) / 5.0 * 1000
            assert st.redis.proc is not None
            rpid = st.redis.proc.pid
            w0, r0, m0 = cpu_seconds(pid), cpu_seconds(rpid), cpu_seconds(mq_pid) if mq_pid else 0.0
            sys_t, raw_t = _chats(api, raw, probe, chats)
            n_run = chats + 10
            w_cpu = (cpu_seconds(pid) - w0) / n_run * 1000
            r_cpu = (cpu_seconds(rpid) - r0) / n_run * 1000
            mq_cpu = [(cpu_seconds(mq_pid) - m0) / n_run * 1000] if mq_pid else []
            over50, over99 = p50(sys_t) - p50(raw_t), pct(sys_t, 99) - pct(raw_t, 99)
            if first is None:
                first, base_rss, base_level = over50, rss, level
                per = float("nan")
            else:
                per = (rss - base_rss) / (level - base_level)
            t.add(level, p50(sys_t), over50, over99, w_cpu, r_cpu, rss / 1024, per, idle_cpu, rate, *mq_cpu)
        last = t.rows[-1]
        assert first is not None
        growth = last[2] / first if first else float("nan")
        t.notes.append(
            f"overhead p50 at {last[0]} / at {t.rows[0][0]}: {growth:.2f}x (target ≤ {TARGET_GROWTH}: "
            f"{'meets' if growth <= TARGET_GROWTH else 'MISSES'}); KB per instance {last[7]:.1f} "
            f"(target ≤ {TARGET_KB:g}: {'meets' if last[7] <= TARGET_KB else 'MISSES'}); fill rate to the "
            f"last level {last[9]:.0f}/s (target ≥ {TARGET_FILL:g}: "
            f"{'meets' if last[9] >= TARGET_FILL else 'MISSES'}); "
            "CPU per chat includes the chats' 10 warm-ups and the idle work during them"
        )
    return [t]


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale")
    ap.add_argument("--levels", default="10,100,1000,10000")
    ap.add_argument("--chats", type=int, default=100)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="levels 10,100,1000 and 40 chats")
    ap.add_argument("--amqp", action="store_true", help="task queues on the machine's RabbitMQ (private vhost)")
    ap.add_argument("--root", help="run the web and worker from this checkout (an A/B against an older commit)")
    args = ap.parse_args(argv)
    levels = [10, 100, 1000] if args.quick else [int(x) for x in args.levels.split(",")]
    return show(run(levels, 40 if args.quick else args.chats, args.threads, args.amqp, args.root))


if __name__ == "__main__":
    main()
