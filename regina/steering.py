"""Steering messages wait in Redis (never in a process's memory) until a step boundary (SPEC §4)."""

from __future__ import annotations

from typing import cast

import redis

from regina import keys


class SteeringQueue:
    """Push a message for an instance; drain all of them atomically at a step boundary."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def push(self, instance_id: str, message: str) -> int:
        """Queue a message; returns how many are waiting."""
        return int(self.r.rpush(keys.steering(instance_id), message))

    def drain(self, instance_id: str) -> list[str]:
        """Take every queued message, oldest first (LRANGE + DEL in one transaction)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(keys.steering(instance_id), 0, -1)
        pipe.delete(keys.steering(instance_id))
        return cast(list[str], pipe.execute()[0])
