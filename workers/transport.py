"""kombu's Redis transport: one publishing client per channel, and pools sized for the worker.

kombu's Redis channel builds a new `redis.Redis` object for every publish, acknowledgement and
event batch (`Channel.conn_or_acquire`). Building one copies redis-py's table of ~170 response
callbacks: about 0.25 ms of CPU, a third of a step's publish cost (docs/benchmarks.md). The
client objects share the channel's connection pool either way, so one cached client per pool
behaves the same. `celeryconfig.broker_transport` selects this class.

kombu's channel pool holds 10 connections by default and raises `MaxConnectionsError` when an
11th is wanted. A worker acknowledges from every step's greenlet and its consumer loop takes its
BRPOP connection from the same pool, so at 64 concurrent chats acks failed and the consumer lost
its broker connection (stalled for ~110 s). The pool here is sized from the worker's concurrency
(`size_broker_pools`, at `celeryd_init`) and blocks for a free connection instead of raising.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

#: Connections a worker needs beside one per greenlet: the consumer's BRPOP, restores, publishes
#: of commands and task events, the pool's health checks.
POOL_HEADROOM = 16
#: Seconds a greenlet waits for a free broker connection before the operation fails.
POOL_WAIT = 30.0


def pool_sizes(concurrency: int) -> dict[str, int]:
    """Broker pool sizes for a process running `concurrency` greenlets at once."""
    return {"max_connections": concurrency + POOL_HEADROOM, "broker_pool_limit": max(64, concurrency + 8)}


def size_broker_pools(conf: Any, concurrency: int) -> None:
    """Size kombu's channel pool and Celery's connection pool for `concurrency` greenlets."""
    sizes = pool_sizes(concurrency)
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        "max_connections": sizes["max_connections"],
    }
    conf.broker_pool_limit = sizes["broker_pool_limit"]


class Channel(kombu_redis.Channel):
    """A Redis channel whose synchronous client is built once per connection pool."""

    _cached_client: Any = None

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """A pool that waits for a free connection (up to POOL_WAIT) instead of raising."""
        params = self._connparams(asynchronous=asynchronous)  # type: ignore[attr-defined]
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return redis.BlockingConnectionPool(timeout=POOL_WAIT, **params)  # type: ignore[no-untyped-call]

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # replaced after a fork or a reconnect: rebuild the client then
        cached = self._cached_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._cached_client = self._create_client()  # type: ignore[attr-defined]
        yield cached


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
