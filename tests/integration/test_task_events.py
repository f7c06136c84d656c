"""What Flower shows: Celery task events for chat steps, read with Celery's own event receiver.

Chat steps bypass Celery's Request/trace path (workers/step_strategy.py) and publish their task events
in batches; Flower reads them through the same `EventReceiver` used here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from celery import Celery

from tests.harness.processes import Cluster
from tests.integration.test_api import spawn


def _collect_events(broker_url: str, stop: threading.Event, into: list[dict[str, Any]], ready: threading.Event) -> None:
    app = Celery(broker=broker_url)
    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": into.append})
        recv.on_consume_ready = lambda *args, **kwargs: ready.set()  # subscribed: events reach us

        def watch_stop() -> None:
            stop.wait()
            recv.should_stop = True

        threading.Thread(target=watch_stop, daemon=True).start()
        recv.capture(limit=None, timeout=None, wakeup=False)


def test_a_chat_step_shows_up_as_a_task_with_name_arguments_and_outcome(api: httpx.Client, cluster: Cluster) -> None:
    events: list[dict[str, Any]] = []
    stop, ready = threading.Event(), threading.Event()
    listener = threading.Thread(target=_collect_events, args=(cluster.redis_url, stop, events, ready), daemon=True)
    listener.start()
    assert ready.wait(10)
    try:
        iid = spawn(api)
        resp = api.post(f"/instances/{iid}/chat", json={"message": "watch me in flower"})
        assert resp.status_code == 200, resp.text
        run_id = resp.headers["X-Run-Id"]
        deadline = time.monotonic() + 10
        mine: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            received = [e for e in events if e["type"] == "task-received" and run_id in str(e.get("args"))]
            if received:
                uuid = received[0]["uuid"]
                mine = {e["type"]: e for e in events if e.get("uuid") == uuid}
                if "task-succeeded" in mine:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
        listener.join(5)
    assert set(mine) >= {"task-received", "task-started", "task-succeeded"}, sorted(mine)
    got = mine["task-received"]
    assert got["name"] == "regina.chat"
    assert iid in got["args"] and "watch me in flower" in got["args"]
    assert got["hostname"] in {p.member_id for p in cluster.procs if p.name.startswith("worker")}
    assert mine["task-succeeded"]["runtime"] > 0
    stamps = [mine[t]["timestamp"] for t in ("task-received", "task-started", "task-succeeded")]
    assert stamps == sorted(stamps)
