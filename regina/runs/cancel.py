"""Cancels across processes: a run id published on `keys.CANCEL_CHANNEL` (SPEC §12).

Every worker listens (`listen`) and cancels the run if it holds it (`CancelToken`, in
`regina.runtime.sink`). The run record's `cancel` field is the durable copy a worker also checks
(at step start and with its heartbeat), so a missed message or a redelivered step still ends
cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from regina import keys
from regina.outage import Outage

log = logging.getLogger("regina.runs")


def announce(client: redis.Redis, run_id: str) -> None:
    """Tell every worker to cancel `run_id` (the one holding it acts)."""
    client.publish(keys.CANCEL_CHANNEL, run_id)


def listen(client: redis.Redis, on_cancel: Callable[[str], object]) -> threading.Thread:
    """Call `on_cancel(run_id)` for every announced cancel (a daemon thread; a greenlet under
    gevent), re-subscribing after a Redis restart."""

    def loop() -> None:
        outage = Outage("cancel listener", log)
        while True:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.CANCEL_CHANNEL)
                outage.ok()
                for msg in pubsub.listen():  # type: ignore[no-untyped-call]
                    if msg.get("type") == "message":
                        on_cancel(str(msg["data"]))
            except redis.RedisError as exc:
                outage.failed(exc)
                threading.Event().wait(outage.delay())

    thread = threading.Thread(target=loop, name="regina-cancel-listener", daemon=True)
    thread.start()
    return thread
