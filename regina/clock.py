"""Redis's clock, kept in each process: one clock for every idle timer without a TIME per write.

Idle timers compare `lastActive` with Redis's clock, so a web or worker whose own clock is off
neither suspends instances early nor never (docs/architecture.md, "One clock"). The chat's open
and finish scripts each called Redis `TIME` for it: one command per chat each. Instead a process
reads `TIME` once and then counts on its monotonic clock from there (`redis_now`), reading it again
after RESYNC seconds; the scripts take the time as an argument. The process's wall clock is never
used, so it may be off by any amount.
"""

from __future__ import annotations

import time

import redis

RESYNC = 30.0
"""Seconds between two reads of Redis's clock (a monotonic clock drifts microseconds in that time)."""

_synced: tuple[float, float] | None = None  # (Redis time, monotonic time) at the last read


def redis_now(client: redis.Redis) -> float:
    """Redis's clock now, in seconds since the epoch (one TIME round trip every RESYNC seconds)."""
    global _synced
    mono = time.monotonic()
    if _synced is None or mono - _synced[1] > RESYNC:
        before = time.monotonic()
        sec, usec = client.time()
        mono = time.monotonic()
        _synced = (sec + usec / 1_000_000 + (mono - before) / 2, mono)
    return _synced[0] + (mono - _synced[1])
