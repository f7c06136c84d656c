"""Redis clients made one way everywhere: decoded strings, health checks, sane timeouts."""

from __future__ import annotations

import redis


def connect(url: str) -> redis.Redis:
    """A client returning `str` values, with a connection pool shared by its users."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )
