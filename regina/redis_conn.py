"""Redis clients made one way everywhere: decoded strings, health checks, sane timeouts.

redis-py's pool refuses a 101st connection (`MaxConnectionsError`) by default. Every waiting
chat holds one connection in a web process (its XREAD) and every running step one in a worker,
so the pool is sized from the process's concurrency and waits for a free connection instead of
failing the request.
"""

from __future__ import annotations

import redis

#: Connections beside one per concurrent request or step: listeners, heartbeats, sweeps.
HEADROOM = 16
#: A web process's concurrent requests (gunicorn `--worker-connections`, see regina/cli.py).
WEB_CONCURRENCY = 1000
#: Seconds a greenlet waits for a free connection before its command fails.
POOL_WAIT = 30.0


def connect(url: str, concurrency: int = WEB_CONCURRENCY) -> redis.Redis:
    """A client returning `str` values, with a pool for `concurrency` concurrent users."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=concurrency + HEADROOM,
        timeout=POOL_WAIT,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )
    return redis.Redis(connection_pool=pool)
