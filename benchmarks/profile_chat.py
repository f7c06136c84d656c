"""Where the milliseconds of one sync chat go (the breakdown behind bench_chat's added latency).

Three independent views of the same workload (sequential chats, short histories):

1. Timeline from the run record's timestamps (web `createdAt`, worker `startedAt`, worker
   `finishedAt`) against the client's clock: web before enqueue / queue → worker / worker step /
   finish → client.
2. CPU per chat of every process (utime+stime deltas from /proc) and Redis commands per chat
   (INFO commandstats deltas).
3. With py-spy in the venv: sampled stacks of the worker's main thread, bucketed (LiteLLM, the
   OpenAI SDK's request transform, event publishing, SQLite, Celery/kombu, idle).

    .venv/bin/python -m benchmarks.profile_chat [--n 200] [--no-spy] [--root TREE] [--config FILE]
        [--spy-out FILE]

`--root` runs the web and worker from another checkout (an A/B against an older commit),
`--config` hands them a `REGINA_CONFIG` file (e.g. `storage: {type: null}`: no journal),
`--spy-out` keeps py-spy's raw stacks (the worker's; the web process's in FILE.web) for a closer look.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Stack, Table, cpu_seconds, show, spawn, stack

PER_INSTANCE = 10

# (bucket, frame substrings); the first bucket with a frame in the stack wins.
WORKER_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("OpenAI SDK request transform (openai/_utils/_transform)", ("openai/_utils/_transform.py",)),
    ("LiteLLM response streaming wrapper", ("streaming_handler.py",)),
    ("HTTP to the model (httpx/httpcore/socket)", ("httpx/", "httpcore/")),
    ("LiteLLM + OpenAI SDK, rest (param mapping, logging objects, client)", ("litellm/", "/openai/")),
    ("publishing run events (Redis XADD)", ("relay.py", "_publish")),
    ("session + VFS (SQLite)", ("session.py", "vfs/sqlite.py")),
    ("instance record / epoch checks (Redis)", ("instances.py",)),
    ("agent loop, rest", ("runtime/loop.py", "host.py")),
    ("Celery/kombu: consume, trace, ack, task events", ("celery/", "kombu/")),
]


def _chat_loop(st: Stack, n: int, pool: list[str], api, offset: int = 0) -> list[dict[str, float]]:  # noqa: ANN001
    r = st.redis_client()
    rows = []
    for i in range(n):
        iid = pool[(i + offset) % len(pool)]
        t0 = time.time()
        resp = api.post(f"/instances/{iid}/chat", json={"message": f"profile {i}"})
        t1 = time.time()
        resp.raise_for_status()
        h = {k.decode(): v.decode() for k, v in r.hgetall(f"regina:run:{resp.headers['X-Run-Id']}").items()}
        rows.append(
            {
                "web: request in → step enqueued": float(h["createdAt"]) - t0,
                "queue: enqueued → worker starts the step": float(h["startedAt"]) - float(h["createdAt"]),
                "worker: step (LiteLLM call + loop + events)": float(h["finishedAt"]) - float(h["startedAt"]),
                "relay: finish event → client has the reply": t1 - float(h["finishedAt"]),
                "total (client)": t1 - t0,
            }
        )
    r.close()
    return rows


def _spy(pid: int, seconds: int, out: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not spy:
        return None
    return subprocess.Popen(
        [spy, "record", "-d", str(seconds), "-r", "200", "-p", str(pid), "-f", "raw", "--idle", "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _buckets(path: str) -> tuple[int, collections.Counter[str]]:
    """Main-thread samples by bucket (the gevent threadpool's thread is left out)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        stack_s, cnt_s = line.rsplit(" ", 1)
        if "gevent/threadpool.py" in stack_s:
            continue
        cnt = int(cnt_s)
        total += cnt
        frames = stack_s.split(";")
        if frames[-1].startswith("Hub.run "):
            counts["idle (hub waiting on sockets)"] += cnt  # no greenlet runs: all wait on I/O
            continue
        for name, subs in WORKER_BUCKETS:
            if any(s in stack_s for s in subs):
                counts[name] += cnt
                break
        else:
            counts["other"] += cnt
    return total, counts


def run(
    n: int = 200,
    spy: bool = True,
    root: str | None = None,
    config: str | None = None,
    spy_out: str | None = None,
) -> list[Table]:
    tables: list[Table] = []
    env = {"REGINA_CONFIG": os.path.abspath(config)} if config else None
    with stack(env, root) as st:
        with st.client() as api:
            pool = [spawn(api) for _ in range(n // PER_INSTANCE + 4)]
            _chat_loop(st, 30, pool, api)  # warm-up
            pids = {
                "worker (celery gevent)": st.worker.popen.pid,
                "web (gunicorn worker)": st.web_worker_pid(),
                "redis-server": st.redis.proc.pid if st.redis.proc else 0,
                "fake LLM": st.fake_pid,
            }
            rc = st.redis_client()
            stats0 = rc.info("commandstats")
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            me0 = time.process_time()
            w0 = time.perf_counter()
            rows = _chat_loop(st, n, pool, api, offset=7)
            wall = time.perf_counter() - w0
            cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
            me1 = time.process_time()
            stats1 = rc.info("commandstats")

            t1 = Table(
                "Chat timeline from run timestamps (ms, medians)",
                ["segment", "p50", "p99"],
                conditions={"N": n, "histories": f"≤{PER_INSTANCE} chats per instance"},
            )
            for key in rows[0]:
                xs = sorted(x[key] for x in rows)
                t1.add(key, statistics.median(xs) * 1000, xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))] * 1000)
            tables.append(t1)

            t2 = Table(
                "CPU per chat by process (ms; utime+stime / N)",
                ["process", "CPU ms per chat"],
                conditions={"N": n, "wall ms per chat": f"{wall / n * 1000:.2f}"},
            )
            for k in pids:
                t2.add(k, (cpu1[k] - cpu0[k]) / n * 1000)
            t2.add("benchmark client (httpx + run-record reads)", (me1 - me0) / n * 1000)
            tables.append(t2)

            t3 = Table(
                "Redis commands per chat (INFO commandstats deltas)",
                ["command", "calls per chat", "µs per call (server)"],
            )
            rows3 = []
            for k, v in stats1.items():
                calls = v["calls"] - stats0.get(k, {}).get("calls", 0)
                usec = v["usec"] - stats0.get(k, {}).get("usec", 0)
                if calls > 0:
                    rows3.append((k.replace("cmdstat_", ""), calls / n, usec / calls))
            for name, per, us in sorted(rows3, key=lambda x: -x[1]):
                t3.add(name, per, us)
            t3.notes.append(
                "the benchmark's own HGETALL of the run record (1 per chat) is included; the "
                "worker's idle BRPOP loop too"
            )
            tables.append(t3)
            rc.close()

            if spy:
                tmp = tempfile.mkdtemp(prefix="regina-spy-")
                out = os.path.join(tmp, "worker.txt")
                proc = _spy(st.worker.popen.pid, 12, out)
                web_proc = _spy(st.web_worker_pid(), 12, spy_out + ".web") if spy_out else None
                if proc is None:
                    print("py-spy not installed in the venv: skipping the sampled breakdown", file=sys.stderr)
                else:
                    time.sleep(1.0)
                    done = 0
                    t_end = time.monotonic() + 10
                    s0 = time.perf_counter()
                    while time.monotonic() < t_end:
                        _chat_loop(st, 1, pool, api, offset=done)
                        done += 1
                    spent = time.perf_counter() - s0
                    proc.wait()
                    if web_proc is not None:
                        web_proc.wait()
                    total, counts = _buckets(out)
                    t4 = Table(
                        "Worker main thread, py-spy samples (wall time incl. waits)",
                        ["bucket", "% of samples", "≈ ms per chat"],
                        conditions={
                            "chats while sampling": done,
                            "rate": "200 Hz",
                            "wall ms per chat (with py-spy)": f"{spent / max(done, 1) * 1000:.1f}",
                        },
                    )
                    for name, c in counts.most_common():
                        t4.add(name, 100 * c / total, c / total * spent / max(done, 1) * 1000)
                    t4.notes.append("ms per chat = share × wall time per chat while sampled (py-spy slows it)")
                    tables.append(t4)
                    if spy_out:
                        shutil.copyfile(out, spy_out)
                    shutil.rmtree(tmp, ignore_errors=True)
    return tables


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile_chat")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--no-spy", action="store_true")
    ap.add_argument("--root", help="run the web and worker from this checkout (an A/B)")
    ap.add_argument("--config", help="REGINA_CONFIG file for the web and worker")
    ap.add_argument("--spy-out", help="keep py-spy's raw worker stacks in this file")
    args = ap.parse_args(argv)
    tables = run(args.n, not args.no_spy, args.root, args.config, args.spy_out)
    return show(tables)


if __name__ == "__main__":
    main()
