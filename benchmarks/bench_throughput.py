"""Throughput against the number of clients: sync chats/s, errors, latency and server CPU per chat.

A private Redis, the fake LLM in its own process (`--delay`), `--workers` worker processes and one
`regina web` with `--web-procs` gunicorn workers (the deployment docs/scaling.md recommends on a
2-core machine: two of each). Each client is a thread with its own keep-alive connection and its
own instance (one instance's chats run one at a time), sending sync chats back to back for
`--seconds`. Server CPU per chat = CPU of the web, worker and Redis processes over the window /
chats answered.

    .venv/bin/python -m benchmarks.bench_throughput [--clients 1,4,16,64] [--delay 0] [--workers 2]
    .venv/bin/python -m benchmarks.bench_throughput --by-workers 1,2,4 --clients 16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, Table, cpu_seconds, fake_llm_process, machine, p50, pct, show, spawn
from tests.harness.processes import Cluster, Proc
from tests.harness.redis_server import RedisServer


def _tree_cpu(proc: Proc) -> float:
    """CPU seconds of a process and its direct children (gunicorn's master and workers)."""
    pid = proc.popen.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(k)) for k in kids)


def _load(url: str, iids: list[str], seconds: float) -> tuple[int, int, list[float], list[str]]:
    """Every client chats on its own instance until the window ends: (ok, errors, latencies, samples)."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[str] = []

    def client(iid: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as api:
            i = 0
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"})
                    ok = r.status_code == 200
                    why = f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                dt = time.perf_counter() - t0
                with lock:
                    (lat.append(dt) if ok else errors.append(why))
                i += 1

    with cf.ThreadPoolExecutor(len(iids)) as ex:
        for f in [ex.submit(client, iid) for iid in iids]:
            f.result()
    return len(lat), len(errors), lat, errors[:3]


def _verdicts(clients: int, delay: float, rate: float, errors: int, cpu_ms: float) -> list[str]:
    """Issue 16's throughput targets that this row can judge."""
    out = []
    if delay == 0 and clients == 16:
        verdict = "meets" if cpu_ms <= 4 else "MISSES"
        out.append(f"16 clients, 0 ms model: server CPU per chat {cpu_ms:.2f} ms (target ≤ 4: {verdict})")
    if delay > 0 and clients == 64:
        share = rate / (clients / delay)
        verdict = "meets" if share >= 0.9 and errors == 0 else "MISSES"
        out.append(
            f"64 clients, {delay * 1000:g} ms model: {share:.0%} of the {clients / delay:.0f}/s ceiling, "
            f"{errors} errors (target ≥ 90 %, zero errors: {verdict})"
        )
    if clients == 256:
        out.append(f"256 clients: {errors} errors (target zero: {'meets' if errors == 0 else 'MISSES'})")
    return out


def run(
    clients: list[int],
    delay: float = 0.0,
    workers: int = 2,
    web_procs: int = 2,
    seconds: float = 10,
    root: str | None = None,
) -> Table:
    t = Table(
        f"Throughput: sync chats, model delay {delay * 1000:g} ms",
        ["clients", "chats/s", "errors", "p50 (ms)", "p99 (ms)", "server CPU / chat (ms)", "worker CPU share"],
        conditions={**machine(), "worker processes": workers, "web processes": web_procs, "window s": seconds}
        | ({"code": root} if root else {}),
    )
    env = {"REGINA_CONCURRENCY": "300"} | ({"PYTHONPATH": root} if root else {})
    server = RedisServer().start()
    try:
        with fake_llm_process(["--delay", str(delay)]) as fake:
            cluster = Cluster(server.url, fake.url, env_overrides=env, root=Path(root) if root else ROOT)
            try:
                ws = [cluster.start_worker(wait=False) for _ in range(workers)]
                for w in ws:
                    cluster.wait_worker(w)
                web = cluster.start_web(workers=web_procs)
                assert server.proc is not None
                with httpx.Client(base_url=web.url, timeout=120) as api:
                    iids = [spawn(api) for _ in range(max(clients))]
                    for iid in iids[:8]:
                        api.post(f"/instances/{iid}/chat", json={"message": "warm"}).raise_for_status()
                for n in clients:
                    c0 = [_tree_cpu(web), *(cpu_seconds(w.popen.pid) for w in ws), cpu_seconds(server.proc.pid)]
                    t0 = time.monotonic()
                    ok, errs, lat, samples = _load(web.url, iids[:n], seconds)
                    took = time.monotonic() - t0
                    c1 = [_tree_cpu(web), *(cpu_seconds(w.popen.pid) for w in ws), cpu_seconds(server.proc.pid)]
                    used = [b - a for a, b in zip(c0, c1, strict=True)]
                    per = sum(used) / max(ok, 1) * 1000
                    share = sum(used[1 : 1 + workers]) / took / workers
                    t.add(n, ok / took, errs, p50(lat), pct(lat, 99), per, f"{share:.2f} cores/worker")
                    if samples:
                        t.notes.append(f"{n} clients: errors like {samples}")
                    t.notes.extend(_verdicts(n, delay, ok / took, errs, per))
            finally:
                cluster.stop()
    finally:
        server.close()
    return t


def by_workers(
    counts: list[int], clients: int = 16, delay: float = 0.0, seconds: float = 10, root: str | None = None
) -> Table:
    """Throughput at `clients` against the number of worker processes (web processes as many)."""
    t = Table(
        f"Throughput against worker processes: {clients} clients, model delay {delay * 1000:g} ms",
        ["worker processes", "chats/s", "errors", "p50 (ms)", "p99 (ms)", "server CPU / chat (ms)", "worker CPU share"],
        conditions={**machine(), "clients": clients, "web processes": "as many as workers", "window s": seconds},
    )
    for n in counts:
        row = run([clients], delay, workers=n, web_procs=n, seconds=seconds, root=root).rows[0]
        t.add(n, *row[1:])
    return t


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_throughput")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--delay", type=float, default=0.0, help="fake model delay, seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--web-procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--by-workers", help="comma-separated worker counts: one row each at the first --clients")
    ap.add_argument("--root", help="run the web and workers from this checkout (an A/B against an older commit)")
    args = ap.parse_args(argv)
    clients = [int(x) for x in args.clients.split(",")]
    if args.by_workers:
        counts = [int(x) for x in args.by_workers.split(",")]
        return show([by_workers(counts, clients[0], args.delay, args.seconds, args.root)])
    return show([run(clients, args.delay, args.workers, args.web_procs, args.seconds, args.root)])


if __name__ == "__main__":
    main()
