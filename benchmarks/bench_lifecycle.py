"""Spawn and resume latency; suspend / resume per VFS size and storage adapter; worker memory.

0. Spawn p50 (sequential `POST /agents/openai-agent/instances`) and suspend / resume of small
   instances (one chat each) whose worker still has their copy (fs storage).
1. For each storage adapter (fs, s3 on moto's server, redis) and VFS size (10 KB, 1 MB, 50 MB of
   random bytes written into the instance's SQLite VFS from this process): POST …/suspend, POST
   …/resume while the worker still has the file ("local"), suspend again, delete the worker's
   `<id>.sqlite*` files, POST …/resume ("restore": fetched from storage).
2. Worker RSS (VmRSS) with 0 vs N suspended instances (spawned + suspended through the API by a
   small thread pool, N = 10 000 or what fits in the time budget), and with N active idle
   instances (REGINA_IDLE_TIMEOUT=0) → KB per active instance.

    .venv/bin/python -m benchmarks.bench_lifecycle [--quick] [--only spawn|latency|memory]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Stack, Table, machine, pct, rss_kb, show, spawn, stack
from regina.vfs import SQLiteVFS
from tests.harness.s3_server import FAKE_AWS_ENV, S3Server

SIZES = {"10 KB": 10 * 1024, "1 MB": 1024 * 1024, "50 MB": 50 * 1024 * 1024}
TARGET_SUSPEND, TARGET_RESUME, TARGET_KB_ACTIVE = 30.0, 50.0, 100.0
TARGET_SPAWN_P50, TARGET_RESUME_P50 = 5.0, 5.0


def _ok(resp: Any) -> None:
    if resp.status_code >= 300:
        raise RuntimeError(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:300]}")


def _timed_post(api: Any, path: str) -> float:
    t0 = time.perf_counter()
    resp = api.post(path)
    dt = time.perf_counter() - t0
    _ok(resp)
    return dt


def _storage_env(kind: str, tmp: Path, s3: S3Server | None) -> dict[str, str]:
    if kind == "fs":
        return {"REGINA_STORAGE__TYPE": "fs", "REGINA_STORAGE__BASE_PATH": str(tmp / "backups")}
    if kind == "s3":
        assert s3 is not None
        return {
            "REGINA_STORAGE__TYPE": "s3",
            "REGINA_STORAGE__BUCKET": "regina-bench",
            "REGINA_STORAGE__ENDPOINT": s3.endpoint,
            "REGINA_STORAGE__REGION": "us-east-1",
            "REGINA_STORAGE__PREFIX": "bench/",
            **FAKE_AWS_ENV,
        }
    return {"REGINA_STORAGE__TYPE": "redis", "REGINA_STORAGE__PREFIX": "bench/"}


def _lifecycle_one(st: Stack, api: Any, size: int) -> dict[str, float]:
    iid = spawn(api)
    vfs_path = st.vfs_dir() / f"{iid}.sqlite"
    vfs = SQLiteVFS(str(vfs_path))  # the worker holds the same file open: SQLite WAL handles both
    try:
        vfs.write("/data/blob.bin", os.urandom(size))
    finally:
        vfs.close()
    out = {"suspend": _timed_post(api, f"/instances/{iid}/suspend")}
    out["resume (local)"] = _timed_post(api, f"/instances/{iid}/resume")
    out["suspend again"] = _timed_post(api, f"/instances/{iid}/suspend")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(str(vfs_path) + suffix)
        except FileNotFoundError:
            pass
    out["resume (restore)"] = _timed_post(api, f"/instances/{iid}/resume")
    _ok(api.delete(f"/instances/{iid}"))
    return out


def lifecycle_tables(quick: bool) -> list[Table]:
    reps = {"10 KB": 3 if quick else 10, "1 MB": 3 if quick else 10, "50 MB": 1 if quick else 3}
    t = Table(
        "Suspend / resume latency by storage and VFS size (ms, median of reps; max in brackets)",
        ["storage", "VFS", "reps", "suspend", "resume (local)", "suspend again", "resume (restore)"],
        conditions={
            "payload": "random bytes (incompressible) in one VFS file",
            "s3": "moto ThreadedMotoServer in the benchmark process",
            "redis storage": "same Redis as broker",
        },
    )
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    s3 = S3Server().start()
    try:
        s3.make_bucket("regina-bench")
        for kind in ("fs", "s3", "redis"):
            import tempfile

            tmp = Path(tempfile.mkdtemp(prefix="regina-bench-storage-"))
            with stack(_storage_env(kind, tmp, s3)) as st, st.client(timeout=300) as api:
                _lifecycle_one(st, api, 1024)  # warm-up (imports, connections, bucket)
                for label, size in SIZES.items():
                    runs = [_lifecycle_one(st, api, size) for _ in range(reps[label])]
                    cells = []
                    for key in ("suspend", "resume (local)", "suspend again", "resume (restore)"):
                        xs = [r[key] for r in runs]
                        cells.append(f"{statistics.median(xs) * 1000:.1f} [{max(xs) * 1000:.1f}]")
                    t.add(kind, label, len(runs), *cells)
                    if kind == "fs" and label == "1 MB":
                        sus = statistics.median(r["suspend"] for r in runs) * 1000
                        res = statistics.median(r["resume (restore)"] for r in runs) * 1000
                        loc = statistics.median(r["resume (local)"] for r in runs) * 1000
                        t.notes.append(
                            f"fs, 1 MB: suspend {sus:.1f} ms (target ≤ {TARGET_SUSPEND:g}: "
                            f"{'meets' if sus <= TARGET_SUSPEND else 'MISSES'}), resume local {loc:.1f} / restore "
                            f"{res:.1f} ms (target ≤ {TARGET_RESUME:g}: "
                            f"{'meets' if max(res, loc) <= TARGET_RESUME else 'MISSES'}); original resume 905 ms"
                        )
    finally:
        s3.stop()
    return [t]


def _pool_run(api_url: str, fn: Any, n: int, threads: int, deadline: float) -> int:
    """Run fn(client) up to n times on `threads` threads until `deadline`; returns how many ran."""
    import httpx

    done = 0
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        nonlocal done
        with httpx.Client(base_url=api_url, timeout=120) as api:
            while not stop.is_set():
                with lock:
                    if done >= n:
                        return
                    done += 1
                fn(api)
                if time.monotonic() > deadline:
                    stop.set()

    with cf.ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(work) for _ in range(threads)]:
            f.result()
    return done


def _settle_rss(pid: int) -> int:
    time.sleep(2.0)
    return rss_kb(pid)


def memory_tables(quick: bool) -> list[Table]:
    n_susp = 500 if quick else 3_000
    n_active = 200 if quick else 1000
    budget = 40 if quick else 90
    threads = 8
    t = Table(
        "Worker memory (VmRSS of the worker process)",
        ["case", "instances", "RSS before (MB)", "RSS after (MB)", "KB per instance", "took (s)"],
        conditions={"threads": threads, "storage": "fs", "spawn+suspend budget": f"{budget} s"},
    )
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="regina-bench-mem-"))
    with stack(_storage_env("fs", tmp, None)) as st, st.client() as api:
        pid = st.worker.popen.pid

        def spawn_suspend(c: Any) -> None:
            iid = spawn(c)
            _ok(c.post(f"/instances/{iid}/suspend"))

        for _ in range(20):
            spawn_suspend(api)
        before = _settle_rss(pid)
        t0 = time.monotonic()
        done = _pool_run(st.web.url, spawn_suspend, n_susp, threads, t0 + budget)
        took = time.monotonic() - t0
        after = _settle_rss(pid)
        t.add(
            "suspended (spawned + suspended)", done, before / 1024, after / 1024, (after - before) / max(done, 1), took
        )
        if done < n_susp:
            t.notes.append(f"suspended: stopped at N={done} (the {budget} s budget), not {n_susp}")
    with stack({"REGINA_IDLE_TIMEOUT": "0"}) as st, st.client() as api:
        pid = st.worker.popen.pid
        for _ in range(20):
            spawn(api)
        before = _settle_rss(pid)
        fds0 = len(os.listdir(f"/proc/{pid}/fd"))
        t0 = time.monotonic()
        done = _pool_run(st.web.url, spawn, n_active, threads, t0 + budget)
        took = time.monotonic() - t0
        after = _settle_rss(pid)
        fds1 = len(os.listdir(f"/proc/{pid}/fd"))
        per = (after - before) / max(done, 1)
        t.add("active idle (spawned, REGINA_IDLE_TIMEOUT=0)", done, before / 1024, after / 1024, per, took)
        t.notes.append(
            f"active idle: {per:.0f} KB per instance (target ≤ {TARGET_KB_ACTIVE:g}: "
            f"{'meets' if per <= TARGET_KB_ACTIVE else 'MISSES'}); worker open fds "
            f"{fds0} → {fds1} ({(fds1 - fds0) / max(done, 1):.1f} per active instance)"
        )
        # Chat latency with that many queues attached (the BRPOP-over-all-queues cost).
        iid = spawn(api)
        lat = []
        for i in range(40):
            t1 = time.perf_counter()
            _ok(api.post(f"/instances/{iid}/chat", json={"message": f"m{i}"}))
            lat.append(time.perf_counter() - t1)
        t.notes.append(
            f"sync chat with {done + 21} active instances on the worker: p50 "
            f"{statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat[5:], 99):.1f} ms (40 chats)"
        )
    return [t]


def spawn_resume_table(quick: bool) -> Table:
    """Spawn p50 (sequential) and suspend / resume of a small instance whose worker kept its copy."""
    import tempfile

    n_spawn, n_resume = (50, 20) if quick else (200, 60)
    t = Table(
        "Spawn and resume (local copy), sequential, fs storage (ms)",
        ["operation", "N", "p50", "p99"],
        conditions={**machine(), "storage": "fs", "each resumed instance": "one chat before its suspend"},
    )
    tmp = Path(tempfile.mkdtemp(prefix="regina-bench-spawn-"))
    with stack(_storage_env("fs", tmp, None)) as st, st.client() as api:
        for _ in range(10):
            spawn(api)
        spawns = []
        for _ in range(n_spawn):
            t0 = time.perf_counter()
            spawn(api)
            spawns.append(time.perf_counter() - t0)
        iids = [spawn(api) for _ in range(n_resume)]
        for iid in iids:
            _ok(api.post(f"/instances/{iid}/chat", json={"message": "hi"}))
        sus, res = [], []
        for iid in iids:
            sus.append(_timed_post(api, f"/instances/{iid}/suspend"))
            res.append(_timed_post(api, f"/instances/{iid}/resume"))
    for name, xs in (("spawn", spawns), ("suspend", sus), ("resume (local copy)", res)):
        t.add(name, len(xs), statistics.median(xs) * 1000, pct(xs, 99))
    sp50, re50 = statistics.median(spawns) * 1000, statistics.median(res) * 1000
    t.notes.append(
        f"spawn p50 {sp50:.2f} ms, resume (local) p50 {re50:.2f} ms (targets ≤ {TARGET_SPAWN_P50:g} / "
        f"≤ {TARGET_RESUME_P50:g}: {'meets' if sp50 <= TARGET_SPAWN_P50 else 'MISSES'} / "
        f"{'meets' if re50 <= TARGET_RESUME_P50 else 'MISSES'}); original 1 993 / 1 824 ms"
    )
    return t


def run(quick: bool = False) -> list[Table]:
    tables = [spawn_resume_table(quick), *lifecycle_tables(quick)]
    tables[1].conditions = {**machine(), **tables[1].conditions}
    tables += memory_tables(quick)
    return tables


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_lifecycle")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["spawn", "latency", "memory"])
    args = ap.parse_args(argv)
    if args.only == "spawn":
        tables = [spawn_resume_table(args.quick)]
    elif args.only == "latency":
        tables = lifecycle_tables(args.quick)
    elif args.only == "memory":
        tables = memory_tables(args.quick)
    else:
        tables = run(args.quick)
    return show(tables)


if __name__ == "__main__":
    main()
