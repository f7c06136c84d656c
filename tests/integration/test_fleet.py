"""The fleet view (SPEC §12): filters and cursor pages over 2 000 instances, each page quick.

The records are written with the core's own `InstanceStore` into a private Redis (spawning 2 000
instances through workers would take minutes); the listing goes through a real web process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from regina.instances import InstanceStore
from tests.harness.processes import Cluster


def test_fleet_pages_filters_and_stays_quick_over_2000_instances(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    store = InstanceStore(r)
    made: list[str] = []
    for n in range(2000):
        iid = f"{'openai-agent' if n % 2 else 'tool-agent'}-{n:024x}"
        store.create(iid, iid.rsplit("-", 1)[0], f"m{n % 4}")
        if n % 5 == 0:
            store.fenced_set(iid, 1, status="suspended")
        made.append(iid)
    r.hset(store_key := f"regina:inst:{made[7]}", mapping={"promptTokens": 11, "completionTokens": 4})
    r.zadd(f"regina:inst:{made[7]}:runs", {"run-abc": 1.0})
    r.hset("regina:run:run-abc", mapping={"instanceId": made[7], "status": "running"})
    assert store_key

    with httpx.Client(base_url=web.url, timeout=30) as api:

        def walk(**params: Any) -> tuple[list[dict[str, Any]], float]:
            items: list[dict[str, Any]] = []
            slowest = 0.0
            cursor = None
            while True:
                started = time.monotonic()
                resp = api.get("/instances", params={**params, **({"cursor": cursor} if cursor else {})})
                slowest = max(slowest, time.monotonic() - started)
                assert resp.status_code == 200, resp.text
                items += resp.json()
                cursor = resp.headers.get("X-Next-Cursor")
                if cursor is None:
                    return items, slowest

        items, slowest = walk(limit=150)
        assert [i["instanceId"] for i in items] == made  # every instance once, oldest first
        assert slowest < 2.0, slowest
        first = items[7]
        assert set(first) >= {
            "instanceId",
            "definitionId",
            "status",
            "member",
            "epoch",
            "createdAt",
            "lastActive",
            "vfsBytes",
            "usage",
            "runningRun",
        }
        assert first["usage"] == {"promptTokens": 11, "completionTokens": 4} and first["runningRun"] == "run-abc"
        assert items[0]["status"] == "suspended" and items[1]["status"] == "started"

        suspended, _ = walk(status="suspended", limit=100)
        assert [i["instanceId"] for i in suspended] == made[::5]
        on_m1, _ = walk(member="m1", agent="openai-agent", limit=77)
        assert [i["instanceId"] for i in on_m1] == [iid for n, iid in enumerate(made) if n % 4 == 1]

        assert api.get("/instances", params={"limit": "0"}).status_code == 400
        assert api.get("/instances", params={"status": "zombie"}).status_code == 400
        assert api.get("/instances", params={"cursor": "!!"}).status_code == 400
        assert api.get("/instances", params={"agent": "no-such-agent"}).status_code == 404
