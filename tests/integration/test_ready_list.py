"""Workers block on their ready list, not on every instance queue they consume (issue 16).

kombu's BRPOP named every attached queue after every message, so a worker's cost per step grew
with its instances; with the ready list (workers/transport.py) it names the member's command
queue and its ready list, however many instances are attached.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import redis

from tests.harness.processes import Cluster


def test_brpop_names_the_ready_list_not_every_instance_queue(cluster: Cluster, api: httpx.Client) -> None:
    iids = [api.post("/agents/openai-agent/instances", json={}).json()["instanceId"] for _ in range(30)]
    seen: list[list[str]] = []
    stop = threading.Event()
    conn = redis.Redis.from_url(cluster.redis_url, decode_responses=True)

    def watch() -> None:
        with conn.monitor() as m:
            for cmd in m.listen():
                parts: Any = cmd.get("command", "").split(" ")
                if parts[0].upper() == "BRPOP":
                    seen.append(parts[1:-1])
                if stop.is_set():
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for iid in iids:
        assert api.post(f"/instances/{iid}/chat", json={"message": "hi"}).json()["text"] == "echo: hi"
    stop.set()
    api.get("/healthz")  # one more command so the monitor loop sees the stop flag
    t.join(10)
    conn.close()
    assert len(seen) >= len(iids)  # a BRPOP at least after every step
    assert all(len(names) <= 2 for names in seen), max(seen, key=len)
    assert all(any(n.strip('"').startswith("regina:ready:") for n in names) for names in seen)
