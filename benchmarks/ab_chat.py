"""A/B of two checkouts' CPU per chat, side by side, for a machine whose load moves.

    .venv/bin/python -m benchmarks.ab_chat ROOT_A ROOT_B [--rounds 10] [--block 60]

Starts two stacks at once (each its own Redis, fake LLM, worker and web process, as
`profile_chat`), then alternates blocks of `--block` sequential sync chats between them (A B,
B A, ...), so each pair of blocks runs under nearly the same load: on a shared 2-core machine
`profile_chat` runs a minute apart moved ±0.7 ms of worker CPU per chat, more than the changes
it was to measure. CPU is read from every thread's `schedstat` (nanoseconds, not clock ticks).
Prints each round and, per figure, both medians and the median of the paired differences (B − A).

The queue and step split uses timestamps from two clocks (the web's and the worker's) that each
stack keeps on its own Redis's: compare their sum, or `total`, across the two stacks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from typing import Any

import httpx
import redis

from benchmarks.common import Stack, spawn, stack


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads so far (seconds, from schedstat's nanoseconds)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # the thread ended meanwhile
            pass
    return total / 1e9


def _chats(r: redis.Redis, api: httpx.Client, pool: list[str], n: int, offset: int) -> dict[str, float]:
    queue, step, total = [], [], []
    for i in range(n):
        iid = pool[(i + offset) % len(pool)]
        t0 = time.time()
        resp = api.post(f"/instances/{iid}/chat", json={"message": f"ab {i + offset}"})
        t1 = time.time()
        resp.raise_for_status()
        h = {k.decode(): v.decode() for k, v in r.hgetall(f"regina:run:{resp.headers['X-Run-Id']}").items()}
        queue.append(float(h["startedAt"]) - float(h["createdAt"]))
        step.append(float(h["finishedAt"]) - float(h["startedAt"]))
        total.append(t1 - t0)
    return {
        "queue": statistics.median(queue) * 1e3,
        "step": statistics.median(step) * 1e3,
        "total": statistics.median(total) * 1e3,
    }


def run(root_a: str, root_b: str, rounds: int = 10, block: int = 60) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with contextlib.ExitStack() as es:
        sides: dict[str, tuple[Stack, httpx.Client, redis.Redis, list[str], dict[str, int]]] = {}
        for name, root in (("A", root_a), ("B", root_b)):
            st = es.enter_context(stack(None, root))
            api = es.enter_context(st.client())
            r = st.redis_client()
            es.callback(r.close)
            pool = [spawn(api) for _ in range(24)]
            _chats(r, api, pool, 40, 0)  # warm-up
            pids = {"worker": st.worker.popen.pid, "web": st.web_worker_pid()}
            if st.redis.proc:
                pids["redis"] = st.redis.proc.pid
            sides[name] = (st, api, r, pool, pids)
        for rd in range(rounds):
            for name in ("A", "B") if rd % 2 == 0 else ("B", "A"):
                _st, api, r, pool, pids = sides[name]
                c0 = {k: cpu_seconds(p) for k, p in pids.items()}
                row: dict[str, Any] = _chats(r, api, pool, block, rd * block)
                c1 = {k: cpu_seconds(p) for k, p in pids.items()}
                row.update({k: (c1[k] - c0[k]) / block * 1e3 for k in pids})
                results[name].append(row)
            load = open("/proc/loadavg").read().split()[0]
            a, b = results["A"][-1], results["B"][-1]
            print(f"round {rd} load {load}  " + "  ".join(f"{k} {a[k]:.2f}/{b[k]:.2f}" for k in a), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root_a")
    ap.add_argument("root_b")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--block", type=int, default=60)
    args = ap.parse_args(argv)
    res = run(args.root_a, args.root_b, args.rounds, args.block)
    print(f"A = {args.root_a}  B = {args.root_b}  ({args.rounds} rounds of {args.block} chats a side)")
    for key in res["A"][0]:
        a = [x[key] for x in res["A"]]
        b = [x[key] for x in res["B"]]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        lower = sum(d < 0 for d in diffs)
        print(
            f"{key:8s} A {statistics.median(a):.3f}  B {statistics.median(b):.3f}  "
            f"paired B-A {statistics.median(diffs):+.3f} ms  (B lower in {lower}/{len(diffs)})"
        )


if __name__ == "__main__":
    main()
