"""One coordinator at a time places an instance: the activation lock, taken in the same round trip
as the first read of what it guards (the record, and whether its member lives and takes new work).

The lock is a key holding the holder's random token; it is released by token (a holder whose lock
expired never deletes the next holder's), as redis-py's Lock does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import redis

from regina import keys
from regina.errors import Unavailable
from regina.instances import InstanceRecord, record_from_hash

# KEYS: record, the members set. ARGV: member key prefix. The record's member lives (its address
# key exists) and takes new instances (it is in the members set: not leaving).
_LUA_READ = """
local function read()
  local rec = redis.call('HGETALL', KEYS[2])
  local alive, placeable = '0', '0'
  for i = 1, #rec, 2 do
    if rec[i] == 'member' and rec[i + 1] ~= '' then
      if redis.call('EXISTS', ARGV[1] .. rec[i + 1]) == 1 then alive = '1' end
      if redis.call('SISMEMBER', KEYS[3], rec[i + 1]) == 1 then placeable = '1' end
    end
  end
  table.insert(rec, 1, placeable)
  table.insert(rec, 1, alive)
  return rec
end
"""

# KEYS: lock, record, members. ARGV: member key prefix, token, lock TTL ms. nil when someone
# else holds the lock; else [alive, placeable, field, value, …] (no fields: no record).
_LOCK_AND_READ = (
    _LUA_READ
    + """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return false end
return read()
"""
)

# KEYS: lock, record, members. ARGV: member key prefix.
_READ = _LUA_READ + "return read()"

# KEYS: lock. ARGV: token. Deletes the lock only while it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Seen:
    """An instance as a placer reads it: None when it does not exist."""

    record: InstanceRecord | None
    alive: bool
    placeable: bool


class ActivationLock:
    """The activation lock of instances and the reads that go with it."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._lock_and_read = client.register_script(_LOCK_AND_READ)
        self._read = client.register_script(_READ)
        self._release = client.register_script(_RELEASE)

    def read(self, instance_id: str) -> Seen:
        """The record, whether its member lives and whether it takes new instances (one round trip)."""
        return _seen(instance_id, self._read(keys=self._keys(instance_id), args=[keys.member("")]))

    @contextmanager
    def held(self, instance_id: str, wait: float, sleep: float = 0.01) -> Iterator[Seen]:
        """Hold the instance's lock (waiting up to `wait` seconds for it; it expires a second
        after that) and yield what was read when it was taken; Unavailable when it stays taken."""
        token = uuid.uuid4().hex
        lock = keys.activation_lock(instance_id)
        args: list[str | int] = [keys.member(""), token, int((wait + 1) * 1000)]
        deadline = time.monotonic() + wait
        while True:
            flat = self._lock_and_read(keys=self._keys(instance_id), args=args)
            if flat is not None:
                break
            if time.monotonic() + sleep > deadline:
                raise Unavailable(f"instance is busy being placed ({lock}); try again")
            time.sleep(sleep)
        try:
            yield _seen(instance_id, flat)
        finally:
            self._release(keys=[lock], args=[token])

    @staticmethod
    def _keys(instance_id: str) -> list[str]:
        return [keys.activation_lock(instance_id), keys.instance_record(instance_id), keys.MEMBERS]


def _seen(instance_id: str, reply: object) -> Seen:
    flat = cast(list[str], reply)
    h = dict(zip(flat[2::2], flat[3::2], strict=True))
    return Seen(record_from_hash(instance_id, h) if h else None, flat[0] == "1", flat[1] == "1")
