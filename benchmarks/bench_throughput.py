"""Throughput against the number of clients: sync chats/s, errors, latency and server CPU per chat.

A private Redis, the fake LLM in its own process (`--delay`), `--workers` worker processes and one
`regina web` with `--web-procs` gunicorn workers (the deployment docs/scaling.md recommends on a
2-core machine: two of each). Each client has its own keep-alive connection and its own instance
(one instance's chats run one at a time) and sends sync chats back to back for `--seconds`; all
clients are served by one thread and a selector (`--client httpx`: a thread and an httpx client
each, ≈ 10x the load tool's CPU). Server CPU per chat = CPU of the web, worker and Redis processes
over the window / chats answered; the load tool's (this process's clients and the fake LLM) is
shown beside it. `--timeline` adds where a chat's time goes, from its run record's timestamps.

    .venv/bin/python -m benchmarks.bench_throughput [--clients 1,4,16,64] [--delay 0] [--workers 2]
    .venv/bin/python -m benchmarks.bench_throughput --by-workers 1,2,4 --clients 16
    .venv/bin/python -m benchmarks.bench_throughput --clients 64 --delay 0.2 --timeline
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import selectors
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

from benchmarks.common import ROOT, Table, cpu_seconds, fake_llm_process, machine, p50, pct, show, spawn
from tests.harness.processes import Cluster, Proc
from tests.harness.redis_server import RedisServer


def _tree_cpu(proc: Proc) -> float:
    """CPU seconds of a process and its direct children (gunicorn's master and workers)."""
    pid = proc.popen.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(k)) for k in kids)


Runs = list[tuple[str, float, float]]
Outcome = tuple[int, int, list[float], list[str]]


def _load(url: str, iids: list[str], seconds: float, runs: Runs | None = None) -> Outcome:
    """Every client chats on its own instance until the window ends: (ok, errors, latencies, samples).

    With `runs`, each answered chat's (run id, wall clock sent, wall clock answered) is appended.
    The clients are keep-alive sockets served by one thread and one selector: a request is bytes
    made once, an answer is read up to its Content-Length. With a thread and an httpx client each
    (`_load_httpx`), the load tool itself took ≈ 2-3 ms of CPU per chat, as much as half of what
    the servers spent, on the same two cores.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop = time.monotonic() + seconds
    lat: list[float] = []
    errors: list[str] = []
    sel = selectors.DefaultSelector()
    clients = [_LeanClient(host, port, iid) for iid in iids]
    for c in clients:
        c.send()
        sel.register(c.sock, selectors.EVENT_READ, c)
    live = len(clients)
    while live:
        for key, _ in sel.select(timeout=120) or _timed_out():
            c = key.data
            done = c.receive()
            if done is None:
                continue
            dt = time.perf_counter() - c.t0
            ok, why, run_id = done
            if ok:
                lat.append(dt)
                if runs is not None:
                    runs.append((run_id, c.w0, c.w0 + dt))
            else:
                errors.append(why)
            if c.closed:
                sel.unregister(c.sock)
                c.reconnect()
                sel.register(c.sock, selectors.EVENT_READ, c)
            if time.monotonic() < stop:
                c.send()
            else:
                sel.unregister(c.sock)
                c.sock.close()
                live -= 1
    sel.close()
    return len(lat), len(errors), lat, errors[:3]


def _timed_out() -> list[Any]:
    raise TimeoutError("no chat answered for 120 s")


class _LeanClient:
    """One keep-alive HTTP/1.1 connection chatting on one instance: send, then read the answer."""

    def __init__(self, host: str, port: int, iid: str) -> None:
        self.host, self.port, self.i = host, port, 0
        self.head = (
            f"POST /instances/{iid}/chat HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.closed = False
        self.reconnect()

    def reconnect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False

    def send(self) -> None:
        body = b'{"message":"m%d"}' % self.i
        self.i += 1
        self.buf = b""
        self.w0, self.t0 = time.time(), time.perf_counter()
        try:
            self.sock.sendall(self.head + b"%d\r\n\r\n" % len(body) + body)
        except OSError:
            pass  # a dead connection: the selector reports it readable, `receive` counts the error

    def receive(self) -> tuple[bool, str, str] | None:
        """(ok, why not, run id) once the whole answer is in, else None (more to read)."""
        try:
            data = self.sock.recv(65536)
        except OSError as exc:  # reset: counted as an error, the client reconnects
            data, why = b"", repr(exc)
        else:
            why = "connection closed by the server"
        if not data:
            self.closed = True
            return False, why, ""
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return None
        status = int(lines[0].split()[1])
        self.closed = fields.get("connection", "").lower() == "close"
        body = self.buf[end + 4 : end + 4 + length]
        return status == 200, f"{status} {body[:120].decode('utf-8', 'replace')}", fields.get("x-run-id", "")


def _load_httpx(url: str, iids: list[str], seconds: float, runs: Runs | None = None) -> Outcome:
    """`_load` with a thread and an httpx client per client (the tool before `_load`; `--client httpx`)."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[str] = []

    def client(iid: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as api:
            i = 0
            while time.monotonic() < stop:
                w0, t0 = time.time(), time.perf_counter()
                try:
                    r = api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"})
                    ok = r.status_code == 200
                    why = f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)
                dt = time.perf_counter() - t0
                with lock:
                    (lat.append(dt) if ok else errors.append(why))
                    if ok and runs is not None:
                        runs.append((r.headers["X-Run-Id"], w0, w0 + dt))
                i += 1

    with cf.ThreadPoolExecutor(len(iids)) as ex:
        for f in [ex.submit(client, iid) for iid in iids]:
            f.result()
    return len(lat), len(errors), lat, errors[:3]


LOADERS = {"lean": _load, "httpx": _load_httpx}


#: A row's figures after its first column (clients, or worker processes).
_RESULT_COLUMNS = [
    "chats/s",
    "errors",
    "p50 (ms)",
    "p99 (ms)",
    "server CPU / chat (ms)",
    "worker CPU share",
    "load tool CPU / chat (ms): clients + fake LLM",
]


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
    timeline: bool = False,
    client: str = "lean",
) -> list[Table]:
    t = Table(
        f"Throughput: sync chats, model delay {delay * 1000:g} ms",
        ["clients", *_RESULT_COLUMNS],
        conditions={
            **machine(),
            "worker processes": workers,
            "web processes": web_procs,
            "window s": seconds,
            "client": client,
        }
        | ({"code": root} if root else {}),
    )
    tl = Table(
        f"Where a chat's time goes: sync chats, model delay {delay * 1000:g} ms (ms: median / p90 / mean)",
        ["clients", *_SEGMENTS],
        conditions=dict(t.conditions),
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
                    tool0 = time.process_time(), cpu_seconds(fake.pid)
                    t0 = time.monotonic()
                    runs: list[tuple[str, float, float]] | None = [] if timeline else None
                    ok, errs, lat, samples = LOADERS[client](web.url, iids[:n], seconds, runs)
                    took = time.monotonic() - t0
                    tool1 = time.process_time(), cpu_seconds(fake.pid)
                    c1 = [_tree_cpu(web), *(cpu_seconds(w.popen.pid) for w in ws), cpu_seconds(server.proc.pid)]
                    used = [b - a for a, b in zip(c0, c1, strict=True)]
                    per = sum(used) / max(ok, 1) * 1000
                    share = sum(used[1 : 1 + workers]) / took / workers
                    client_ms, fake_ms = ((b - a) / max(ok, 1) * 1000 for a, b in zip(tool0, tool1, strict=True))
                    tool = f"{client_ms:.2f} + {fake_ms:.2f}"
                    t.add(n, ok / took, errs, p50(lat), pct(lat, 99), per, f"{share:.2f} cores/worker", tool)
                    if samples:
                        t.notes.append(f"{n} clients: errors like {samples}")
                    t.notes.extend(_verdicts(n, delay, ok / took, errs, per))
                    web_ms, redis_ms = (used[0] / max(ok, 1) * 1000, used[-1] / max(ok, 1) * 1000)
                    t.notes.append(
                        f"{n} clients: server CPU per chat = web {web_ms:.2f} + workers {per - web_ms - redis_ms:.2f}"
                        f" + Redis {redis_ms:.2f} ms"
                    )
                    if runs:
                        tl.add(n, *_timeline(server.url, runs))
            finally:
                cluster.stop()
    finally:
        server.close()
    return [t, tl] if timeline else [t]


#: A chat's segments from the run record's timestamps (Redis clock) against the client's clock.
_SEGMENTS = [
    "client send → run opened",
    "opened → worker starts the step",
    "worker step",
    "step finished → client has the reply",
    "total",
]


def _timeline(redis_url: str, runs: list[tuple[str, float, float]]) -> list[str]:
    """Median / p90 / mean of each segment over the window's chats (profile_chat's timeline)."""
    r = redis.Redis.from_url(redis_url)
    try:
        with r.pipeline(transaction=False) as pipe:
            for run_id, _, _ in runs:
                pipe.hmget(f"regina:run:{run_id}", "createdAt", "startedAt", "finishedAt")
            records = pipe.execute()
    finally:
        r.close()
    cols: list[list[float]] = [[] for _ in _SEGMENTS]
    for (_, sent, got), rec in zip(runs, records, strict=True):
        if None in rec:
            continue
        created, started, finished = (float(x) for x in rec)
        for i, v in enumerate((created - sent, started - created, finished - started, got - finished, got - sent)):
            cols[i].append(v)
    return [f"{p50(c):.1f} / {pct(c, 90):.1f} / {statistics.fmean(c) * 1000:.1f}" if c else "-" for c in cols]


def by_workers(
    counts: list[int],
    clients: int = 16,
    delay: float = 0.0,
    seconds: float = 10,
    root: str | None = None,
    client: str = "lean",
) -> Table:
    """Throughput at `clients` against the number of worker processes (web processes as many)."""
    t = Table(
        f"Throughput against worker processes: {clients} clients, model delay {delay * 1000:g} ms",
        ["worker processes", *_RESULT_COLUMNS],
        conditions={**machine(), "clients": clients, "web processes": "as many as workers", "window s": seconds},
    )
    for n in counts:
        row = run([clients], delay, workers=n, web_procs=n, seconds=seconds, root=root, client=client)[0].rows[0]
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
    ap.add_argument("--timeline", action="store_true", help="also where a chat's time goes (run record timestamps)")
    ap.add_argument("--client", choices=sorted(LOADERS), default="lean", help="load tool (httpx: the older, costlier)")
    ap.add_argument("--root", help="run the web and workers from this checkout (an A/B against an older commit)")
    args = ap.parse_args(argv)
    clients = [int(x) for x in args.clients.split(",")]
    if args.by_workers:
        counts = [int(x) for x in args.by_workers.split(",")]
        return show([by_workers(counts, clients[0], args.delay, args.seconds, args.root, args.client)])
    return show(
        run(clients, args.delay, args.workers, args.web_procs, args.seconds, args.root, args.timeline, args.client)
    )


if __name__ == "__main__":
    main()
