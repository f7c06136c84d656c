"""The periodic orphan sweep and `GET /instances` against many instance records (issue: O(N) paths).

Writes N instance records (all owned by one live member, so the sweep finds nothing to do) into
a private Redis, then times one `sweep_orphans` pass and one `InstanceStore.all()` (what
`GET /instances` reads) at each N. Both read every record today: the time grows with N.

.venv/bin/python -m benchmarks.bench_sweep [--sizes 1000,10000,100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import Table, show
from regina import keys
from regina.cluster.orphans import sweep_orphans
from regina.instances import InstanceStore
from regina.redis_conn import connect
from tests.harness.redis_server import RedisServer

MEMBER = "bench-member"


def _fill(store: InstanceStore, start: int, stop: int) -> None:
    """Instance records start..stop-1, written in pipelined batches (as `create` writes them)."""
    now = store.now()
    for lo in range(start, stop, 5000):
        pipe = store.r.pipeline(transaction=False)
        for i in range(lo, min(stop, lo + 5000)):
            iid = f"bench-{i:024x}"
            pipe.hset(
                keys.instance_record(iid),
                mapping={
                    "definitionId": "bench",
                    "status": "started",
                    "member": MEMBER,
                    "epoch": "1",
                    "createdAt": repr(now),
                    "lastActive": repr(now),
                    "backupVersion": "0",
                },
            )
            pipe.set(keys.instance_owner(iid), MEMBER)
            pipe.zadd(keys.INSTANCES, {iid: now + i})
        pipe.execute()


def _median_ms(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_sweep")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    table = Table(
        "Orphan sweep and GET /instances vs instance records (median ms)",
        ["records", "sweep pass", "InstanceStore.all()", "Redis memory (MB)"],
        conditions={"runs": args.runs, "member": "1 live, owns every record"},
    )
    with RedisServer() as server:
        client = connect(server.url)
        store = InstanceStore(client)
        client.set(keys.member(MEMBER), "127.0.0.1")
        client.sadd(keys.MEMBERS, MEMBER)
        filled = 0
        for n in sizes:
            _fill(store, filled, n)
            filled = n

            def sweep() -> None:
                client.delete(keys.SWEEP_ORPHANS_LOCK)
                sweep_orphans(client, lambda _iid: None, lambda _ids: set(), 10.0)

            sweep_ms = _median_ms(sweep, args.runs)
            all_ms = _median_ms(store.all, args.runs)
            mem = int(client.info("memory")["used_memory"]) / 1e6
            table.add(n, sweep_ms, all_ms, mem)
        client.close()
    return show([table])


if __name__ == "__main__":
    main()
