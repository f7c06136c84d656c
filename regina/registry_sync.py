"""Keep every web and worker process on the same agent registry.

A reload asked of one process (admin endpoint) is announced on a Redis channel; every process
listens and rebuilds its own registry from `agentsDir` (each swap is atomic; a failed rebuild
keeps the old registry and is logged).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from regina import keys
from regina.registry import AgentRegistry

log = logging.getLogger("regina.registry")

CHANNEL = keys.REGISTRY_RELOAD


def announce_reload(client: redis.Redis) -> int:
    """Ask every process to reload; returns how many listeners received it."""
    return int(client.publish(CHANNEL, str(time.time())))


def start_reload_listener(client: redis.Redis, registry: AgentRegistry) -> threading.Thread:
    """Reload `registry` whenever a reload is announced (a daemon thread; a greenlet under gevent)."""

    def listen() -> None:
        while True:
            try:
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
                pubsub.subscribe(CHANNEL)
                for message in pubsub.listen():  # type: ignore[no-untyped-call,unused-ignore]
                    if message.get("type") != "message":
                        continue
                    try:
                        registry.reload()
                        log.info("agent registry reloaded on request: %d definition(s)", len(registry.list()))
                    except Exception:
                        log.exception("agent registry reload failed; keeping the previous one")
            except redis.RedisError as exc:
                log.warning("registry reload listener lost Redis (%s); reconnecting", exc)
                time.sleep(1)

    thread = threading.Thread(target=listen, name="regina-registry-reload", daemon=True)
    thread.start()
    return thread
