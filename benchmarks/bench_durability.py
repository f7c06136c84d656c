"""What durability costs and what failure costs: journal cost per chat, failover time, rolling restarts.

1. Durability cost per sync chat (< 10 KB changed): three stacks side by side, requests
   interleaved so the machine's noise hits each alike — this tree with storage (the journal on),
   this tree without storage (no journal), and `--base` (another checkout, e.g. a worktree of the
   commit before the journal) with storage.
2. Failover: 3 workers; kill -9 the one holding the instances, then time kill → first good
   answer for each of its instances (every instance chats at once right after the kill).
3. Rolling restart: a client chats in a loop while each of 2 workers is replaced in turn
   (SIGTERM, a new one joins); latency during the restarts vs before.

    .venv/bin/python -m benchmarks.bench_durability [--quick] [--n 200] [--base /path/to/tree]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Iterator

from benchmarks.common import Stack, Table, machine, p50, pct, show, spawn, stack

STORAGE = {"REGINA_STORAGE__TYPE": "redis", "REGINA_IDLE_TIMEOUT": "0"}


def durability_cost(n: int, base: str | None) -> Table:
    variants: dict[str, dict[str, str]] = {
        "journal (storage: redis)": dict(STORAGE),
        "no journal (no storage)": {"REGINA_IDLE_TIMEOUT": "0"},
    }
    if base:
        variants["base tree (storage: redis)"] = {**STORAGE, "PYTHONPATH": base}
    t = Table(
        "Durability cost per sync chat (one run, interleaved)",
        ["variant", "p50 ms", "p99 ms", "n"],
        conditions={**machine(), "n": n, "base": base or "-"},
        notes=["fresh instance per variant; every chat appends 2 transcript lines (< 1 KB changed)"],
    )
    with contextlib.ExitStack() as stack_:
        stacks: dict[str, Stack] = {name: stack_.enter_context(stack(env)) for name, env in variants.items()}
        clients = {name: stack_.enter_context(s.client()) for name, s in stacks.items()}
        iids = {name: spawn(c) for name, c in clients.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(n + 20):
            for name, c in clients.items():
                t0 = time.perf_counter()
                resp = c.post(f"/instances/{iids[name]}/chat", json={"message": f"hello {i}"})
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise RuntimeError(f"{name}: {resp.status_code} {resp.text}")
                if i >= 20:  # warm-up
                    times[name].append(dt)
    for name, xs in times.items():
        t.add(name, p50(xs), pct(xs, 99), len(xs))
    return t


@contextlib.contextmanager
def _three_workers() -> Iterator[Stack]:
    with stack(STORAGE) as s:
        extra = [s.cluster.start_worker(wait=False) for _ in range(2)]
        for w in extra:
            s.cluster.wait_worker(w)
        yield s


def failover(rounds: int, per_round: int) -> Table:
    t = Table(
        "Failover: kill -9 to the first good answer of each instance the dead worker held",
        ["p50 s", "p90 s", "max s", "instances"],
        conditions={**machine(), "memberTtl": 3, "memberHeartbeat": 0.5, "rounds": rounds},
        notes=["storage redis, no shared vfsDir; every instance chats at once right after the kill"],
    )
    gaps: list[float] = []
    with _three_workers() as s, s.client() as api:
        for _ in range(rounds):
            victim = next(p for p in s.cluster.procs if p.name.startswith("worker") and p.alive())
            iids = []
            while len(iids) < per_round:
                iid = spawn(api)
                if api.get(f"/instances/{iid}").json()["member"] == victim.member_id:
                    api.post(f"/instances/{iid}/chat", json={"message": "warm"})
                    iids.append(iid)
            victim.kill()
            killed = time.monotonic()
            done: list[float] = []

            def first_answer(iid: str, killed: float, done: list[float]) -> None:
                while True:
                    resp = api.post(f"/instances/{iid}/chat", json={"message": "after the kill"})
                    if resp.status_code == 200:
                        done.append(time.monotonic() - killed)
                        return

            threads = [threading.Thread(target=first_answer, args=(iid, killed, done)) for iid in iids]
            for th in threads:
                th.start()
            for th in threads:
                th.join(120)
            gaps += done
            fresh = s.cluster.start_worker(wait=False)
            s.cluster.wait_worker(fresh)
    gaps.sort()
    t.add(pct(gaps, 50) / 1000, pct(gaps, 90) / 1000, gaps[-1], len(gaps))
    return t


def rolling(before_s: float) -> Table:
    t = Table(
        "Rolling restart: chat latency while each of 2 workers is replaced (SIGTERM, new one joins)",
        ["phase", "p50 ms", "p99 ms", "max ms", "chats", "failed"],
        conditions={**machine(), "workers": 2},
    )
    with stack(STORAGE) as s, s.client() as api:
        second = s.cluster.start_worker(wait=False)
        s.cluster.wait_worker(second)
        iids = [spawn(api) for _ in range(4)]
        phase = {"now": "steady"}
        lat: dict[str, list[float]] = {"steady": [], "restarting": []}
        failed: dict[str, int] = {"steady": 0, "restarting": 0}
        stop = threading.Event()

        def loop() -> None:
            n = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                resp = api.post(f"/instances/{iids[n % 4]}/chat", json={"message": f"loop {n}"})
                ph = phase["now"]
                lat[ph].append(time.perf_counter() - t0)
                failed[ph] += resp.status_code != 200
                n += 1

        th = threading.Thread(target=loop)
        th.start()
        time.sleep(before_s)
        phase["now"] = "restarting"
        for old in [s.worker, second]:
            old.stop()
            fresh = s.cluster.start_worker(wait=False)
            s.cluster.wait_worker(fresh)
        stop.set()
        th.join(120)
    for ph in ("steady", "restarting"):
        xs = lat[ph]
        t.add(ph, p50(xs), pct(xs, 99), max(xs) * 1000 if xs else float("nan"), len(xs), failed[ph])
    return t


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_durability")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int)
    ap.add_argument("--base", help="another checkout to compare with (its regina/ on PYTHONPATH)")
    ap.add_argument("--only", choices=["cost", "failover", "rolling"])
    args = ap.parse_args(argv)
    n = args.n or (60 if args.quick else 300)
    base = os.path.abspath(args.base) if args.base else None
    tables: list[Table] = []
    if args.only in (None, "cost"):
        tables.append(durability_cost(n, base))
    if args.only in (None, "failover"):
        tables.append(failover(2 if args.quick else 3, 4 if args.quick else 6))
    if args.only in (None, "rolling"):
        tables.append(rolling(5.0 if args.quick else 10.0))
    return show(tables)


if __name__ == "__main__":
    main()
