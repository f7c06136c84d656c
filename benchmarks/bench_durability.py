"""What durability costs and what failure costs: journal cost per chat, failover time, rolling restarts.

1. Durability cost per sync chat, one run, requests interleaved so the machine's noise hits each
   stack alike: this tree as configured by default (storage in the cluster's Redis: the journal
   on), this tree with `storage: {type: null}` (no journal), and `--base` (another checkout, e.g.
   `git worktree add /tmp/ab-8df2eb0 8df2eb0`) with storage in Redis. Two message sizes: a short
   one (two transcript lines, < 1 KB changed) and one of 4 500 characters (≈ 9 KB changed: the
   message and the fake model's echo of it), the budget's "< 10 KB" case.
2. Failover: 3 workers; `--kills` times, kill -9 the process group of a worker holding instances,
   then time kill → first good answer for each of its instances (all chat at once right after the
   kill), and kill → every one answered; a fresh worker joins before the next kill.
3. Rolling restart: a client chats in a loop while each of 2 workers is replaced in turn
   (SIGTERM, a new one joins); latency during the restarts vs before, and failed chats.

    .venv/bin/python -m benchmarks.bench_durability [--quick] [--n 200] [--kills 10] [--base /path/to/tree]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator

from benchmarks.common import Stack, Table, machine, p50, pct, show, spawn, stack

STORAGE = {"REGINA_STORAGE__TYPE": "redis", "REGINA_IDLE_TIMEOUT": "0"}
SIZES = {"short (< 1 KB changed)": "hello {i}", "4 500 chars (≈ 9 KB changed)": "{i} " + "x" * 4_500}


def _no_storage_config() -> str:
    """A config file turning storage (and so the journal) off: null has no environment form."""
    fd, path = tempfile.mkstemp(prefix="regina-bench-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write("storage:\n  type: null\n")
    return path


def durability_cost(n: int, base: str | None) -> Table:
    idle = {"REGINA_IDLE_TIMEOUT": "0"}
    variants: dict[str, tuple[dict[str, str], str | None]] = {
        "journal on (default storage: the cluster's Redis)": (idle, None),
        "journal off (storage: {type: null})": ({**idle, "REGINA_CONFIG": _no_storage_config()}, None),
    }
    if base:
        variants[f"base tree {os.path.basename(base)} (storage: redis)"] = (dict(STORAGE), base)
    t = Table(
        "Durability cost per sync chat (one run, interleaved)",
        ["variant", "message", "p50 ms", "p99 ms", "n"],
        conditions={**machine(), "n": n, "base": base or "-"},
        notes=["a fresh instance per variant and size; the fake model answers at once"],
    )
    times: dict[tuple[str, str], list[float]] = {(v, m): [] for v in variants for m in SIZES}
    with contextlib.ExitStack() as stack_:
        stacks: dict[str, Stack] = {n: stack_.enter_context(stack(env, root)) for n, (env, root) in variants.items()}
        clients = {name: stack_.enter_context(s.client()) for name, s in stacks.items()}
        iids = {(v, m): spawn(clients[v]) for v, m in times}
        for i in range(n + 20):
            for (name, size), xs in times.items():
                message = SIZES[size].format(i=i)
                t0 = time.perf_counter()
                resp = clients[name].post(f"/instances/{iids[name, size]}/chat", json={"message": message})
                dt = time.perf_counter() - t0
                if resp.status_code != 200:
                    raise RuntimeError(f"{name}: {resp.status_code} {resp.text}")
                if i >= 20:  # warm-up
                    xs.append(dt)
    for (name, size), xs in times.items():
        t.add(name, size, p50(xs), pct(xs, 99), len(xs))
    return t


@contextlib.contextmanager
def _three_workers() -> Iterator[Stack]:
    with stack(STORAGE) as s:
        extra = [s.cluster.start_worker(wait=False) for _ in range(2)]
        for w in extra:
            s.cluster.wait_worker(w)
        yield s


def failover(kills: int, per_kill: int) -> Table:
    t = Table(
        "Failover: kill -9 of a worker's process group to the first good answer",
        ["measure", "p50 s", "p90 s", "max s", "n"],
        conditions={**machine(), "memberTtl": 3, "memberHeartbeat": 0.5, "kills": kills, "per kill": per_kill},
        notes=["storage in Redis (the default), no shared vfsDir; every instance chats at once right after the kill"],
    )
    each: list[float] = []
    every: list[float] = []
    with _three_workers() as s, s.client() as api:
        for _ in range(kills):
            victim = next(p for p in s.cluster.procs if p.name.startswith("worker") and p.alive())
            iids = []
            while len(iids) < per_kill:
                iid = spawn(api)
                if api.get(f"/instances/{iid}").json()["member"] == victim.member_id:
                    api.post(f"/instances/{iid}/chat", json={"message": "warm"})
                    iids.append(iid)
            victim.kill_group()
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
            if len(done) != len(iids):
                raise RuntimeError(f"{len(iids) - len(done)} instance(s) never answered after the kill")
            each += done
            every.append(max(done))
            fresh = s.cluster.start_worker(wait=False)
            s.cluster.wait_worker(fresh)
    for name, xs in (("kill → each instance's first good answer", each), ("kill → every instance answered", every)):
        xs.sort()
        t.add(name, pct(xs, 50) / 1000, pct(xs, 90) / 1000, xs[-1], len(xs))
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
    ap.add_argument("--kills", type=int, help="failover: how many workers to kill (default 10)")
    ap.add_argument("--base", help="another checkout to compare with (run from its own tree)")
    ap.add_argument("--only", choices=["cost", "failover", "rolling"])
    args = ap.parse_args(argv)
    n = args.n or (60 if args.quick else 300)
    base = os.path.abspath(args.base) if args.base else None
    tables: list[Table] = []
    if args.only in (None, "cost"):
        tables.append(durability_cost(n, base))
    if args.only in (None, "failover"):
        tables.append(failover(args.kills or (2 if args.quick else 10), 3 if args.quick else 5))
    if args.only in (None, "rolling"):
        tables.append(rolling(5.0 if args.quick else 10.0))
    return show(tables)


if __name__ == "__main__":
    main()
