"""The periodic orphan sweep and the fleet view against many instance records (issue: O(N) paths).

Writes N instance records (all owned by one live member, so the sweep finds nothing to do, plus
10 held by a second live member) into a private Redis, as `InstanceStore.create` writes them
(record, owner, the instance sets, the member's held set), then times at each N: one
`sweep_orphans` pass, one `InstanceStore.all()` (`GET /agents/<id>/instances`, the whole list by
contract), and one fleet page `GET /instances?member=<the second>&status=started&limit=100`.

.venv/bin/python -m benchmarks.bench_sweep [--sizes 1000,10000,100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import Table, show
from regina import keys
from regina.cluster.orphans import sweep_orphans
from regina.fleet import Fleet
from regina.instances import InstanceStore
from regina.redis_conn import connect
from tests.harness.redis_server import RedisServer

MEMBER = "bench-member"
RARE = "bench-rare"


def _fill(store: InstanceStore, start: int, stop: int, member: str = MEMBER) -> None:
    """Instance records start..stop-1, written in pipelined batches (as `create` writes them)."""
    now = store.now()
    for lo in range(start, stop, 5000):
        pipe = store.r.pipeline(transaction=False)
        for i in range(lo, min(stop, lo + 5000)):
            iid = f"bench-{member}-{i:024x}"
            pipe.hset(
                keys.instance_record(iid),
                mapping={
                    "definitionId": "bench",
                    "status": "started",
                    "member": member,
                    "epoch": "1",
                    "createdAt": repr(now),
                    "lastActive": repr(now),
                    "backupVersion": "0",
                },
            )
            pipe.set(keys.instance_owner(iid), member)
            pipe.zadd(keys.INSTANCES, {iid: now + i})
            pipe.zadd(keys.definition_instances("bench"), {iid: now + i})
            pipe.zadd(f"regina:held:{member}", {iid: now + i})  # keys.member_held (absent before it)
            pipe.sadd("regina:holders", member)
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
        ["records", "sweep pass", "InstanceStore.all()", "fleet page member=rare", "Redis memory (MB)"],
        conditions={"runs": args.runs, "members": "2 live: one owns every record, one 10 records"},
    )
    with RedisServer() as server:
        client = connect(server.url)
        store = InstanceStore(client)
        for mid in (MEMBER, RARE):
            client.set(keys.member(mid), "127.0.0.1")
            client.sadd(keys.MEMBERS, mid)
        _fill(store, 10**7, 10**7 + 10, RARE)  # the newest instances: a scan from the oldest meets them last
        fleet = Fleet(client)
        filled = 0
        for n in sizes:
            _fill(store, filled, n)
            filled = n

            def sweep() -> None:
                client.delete(keys.SWEEP_ORPHANS_LOCK)
                sweep_orphans(client, lambda _iid: None, lambda _ids: set(), 10.0)

            sweep_ms = _median_ms(sweep, args.runs)
            all_ms = _median_ms(store.all, args.runs)
            page_ms = _median_ms(lambda: fleet.page(member=RARE, status="started", limit=100), args.runs)
            mem = int(client.info("memory")["used_memory"]) / 1e6
            table.add(n, sweep_ms, all_ms, page_ms, mem)
        client.close()
    return show([table])


if __name__ == "__main__":
    main()
