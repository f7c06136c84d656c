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
        self._set = client.register_script(_SET)

    def stale(self, what: str) -> StaleEpoch:
        """The error for a write refused because this owner's epoch is no longer current."""
        return StaleEpoch(f"instance {self.instance_id} moved on (epoch {self.epoch} is stale): {what} refused")

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
