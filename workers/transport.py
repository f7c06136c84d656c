"""kombu's Redis transport, publishing through one client per channel instead of one per call.

kombu's Redis channel builds a new `redis.Redis` object for every publish, acknowledgement and
event batch (`Channel.conn_or_acquire`). Building one copies redis-py's table of ~170 response
callbacks: about 0.25 ms of CPU, a third of a step's publish cost (docs/benchmarks.md). The
client objects share the channel's connection pool either way, so one cached client per pool
behaves the same. `celeryconfig.broker_transport` selects this class.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel whose synchronous client is built once per connection pool."""

    _cached_client: Any = None

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
