"""Fencing (SPEC §6): a worker writes shared state for an instance only while its epoch is current.

Every ownership change bumps the instance's `epoch` (`InstanceStore.claim`). The owner keeps the
epoch it attached at and every write it makes to shared state (run events, run record, steering,
lastActive, the durable journal, backups) is one Lua script that checks the epoch first and
writes nothing when it is stale. A stale owner's write fails with `StaleEpoch`; the host then
drops the instance and stops consuming its queue. Checking and writing in one script is what
closes the window a separate check would leave (a worker paused between the two).
"""

from __future__ import annotations

from typing import cast

import redis

from regina import keys
from regina.errors import StaleEpoch

#: The error text every fenced script answers with; `fenced_call` turns it into StaleEpoch.
STALE = "STALE"

# KEYS: instance record, run events, run record, steering. ARGV: epoch, startedAt.
# Returns {0} when the epoch is stale (nothing written), else {1, last event id, run status,
# steering message…} after marking the run running and taking the steering messages.
_PRE_STEP = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {0} end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local status = redis.call('HGET', KEYS[3], 'status') or ''
redis.call('HSET', KEYS[3], 'status', 'running', 'startedAt', ARGV[2])
local out = {1, last[1] and last[1][1] or '', status}
for _, m in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do out[#out + 1] = m end
redis.call('DEL', KEYS[4])
return out
"""

# KEYS: instance record, steering list. ARGV: epoch. Takes every steering message.
_DRAIN = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
local out = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return out
"""

# KEYS: instance record. ARGV: epoch, then field/value pairs. Errors when stale.
_SET = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def is_stale_error(exc: BaseException) -> bool:
    """True when a Redis error is a fenced script refusing a stale epoch."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(STALE)


class Fence:
    """The fenced writes of one owner (instance id + the epoch it attached at)."""

    def __init__(self, client: redis.Redis, instance_id: str, epoch: int) -> None:
        self.r = client
        self.instance_id = instance_id
        self.epoch = epoch
        self.record = keys.instance_record(instance_id)
        self._pre_step = client.register_script(_PRE_STEP)
        self._drain = client.register_script(_DRAIN)
        self._set = client.register_script(_SET)

    def stale(self, what: str) -> StaleEpoch:
        """The error for a write refused because this owner's epoch is no longer current."""
        return StaleEpoch(f"instance {self.instance_id} moved on (epoch {self.epoch} is stale): {what} refused")

    def pre_step(self, run_id: str, started_at: float) -> tuple[int, str, list[str]]:
        """Check the epoch, mark the run running, take steering: (last seq, previous status, steered)."""
        out = cast(
            list[object],
            self._pre_step(
                keys=[self.record, keys.run_events(run_id), keys.run_record(run_id), keys.steering(self.instance_id)],
                args=[self.epoch, repr(started_at)],
            ),
        )
        if not out or int(cast(int, out[0])) != 1:
            raise self.stale(f"step {run_id}")
        last = str(out[1])
        seq = int(last.split("-")[1]) if last else 0
        return seq, str(out[2]), [str(m) for m in out[3:]]

    def drain_steering(self) -> list[str]:
        """Take every queued steering message, only while the epoch is current."""
        try:
            return cast(list[str], self._drain(keys=[self.record, keys.steering(self.instance_id)], args=[self.epoch]))
        except redis.ResponseError as exc:
            if is_stale_error(exc):
                raise self.stale("steering drain") from exc
            raise

    def set(self, **fields: str | int | float) -> None:
        """Set record fields (lastActive, status, …) only while the epoch is current."""
        args: list[str | int] = [self.epoch]
        for k, v in fields.items():
            args += [k, repr(v) if isinstance(v, float) else str(v)]
        try:
            self._set(keys=[self.record], args=args)
        except redis.ResponseError as exc:
            if is_stale_error(exc):
                raise self.stale(f"record update {sorted(fields)}") from exc
            raise

    def current(self) -> bool:
        """True while this owner's epoch is the record's (a read; writes use the scripts)."""
        return self.r.hget(self.record, "epoch") == str(self.epoch)


def stale_epochs(client: redis.Redis, held: dict[str, int]) -> list[tuple[str, int]]:
    """(instance, epoch) of the `held` instances whose record is at another epoch or gone."""
    if not held:
        return []
    pipe = client.pipeline(transaction=False)
    for iid in held:
        pipe.hget(keys.instance_record(iid), "epoch")
    current = cast(list[str | None], pipe.execute())
    return [(iid, e) for (iid, e), cur in zip(held.items(), current, strict=True) if cur != str(e)]
