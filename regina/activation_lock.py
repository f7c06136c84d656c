"""One coordinator at a time places an instance: the activation lock, taken in the same round trip
as the first read of what it guards (the record, and whether its member lives and takes new work).

The lock is a key holding the holder's random token; it is released by token (a holder whose lock
expired never deletes the next holder's), as redis-py's Lock does. It is a short lease the holder
renews while it works (a placement may wait minutes for a worker's reply), so a holder killed
with -9 blocks the instance for one lease, not for the whole wait.
"""

from __future__ import annotations

import threading
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

# KEYS: lock. ARGV: token, lease ms. Extends the lock only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

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
    """The activation lock of instances and the reads that go with it.

    `lease`: seconds the lock lives without a renewal; the holder renews it every third of that."""

    def __init__(self, client: redis.Redis, lease: float = 5.0) -> None:
        self.r = client
        self.lease = lease
        self._lock_and_read = client.register_script(_LOCK_AND_READ)
        self._read = client.register_script(_READ)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def read(self, instance_id: str) -> Seen:
        """The record, whether its member lives and whether it takes new instances (one round trip)."""
        return _seen(instance_id, self._read(keys=self._keys(instance_id), args=[keys.member("")]))

    @contextmanager
    def held(self, instance_id: str, wait: float, sleep: float = 0.01) -> Iterator[Seen]:
        """Hold the instance's lock (waiting up to `wait` seconds for it; renewed while held) and
        yield what was read when it was taken; Unavailable when it stays taken."""
        token = uuid.uuid4().hex
        lock = keys.activation_lock(instance_id)
        lease_ms = int(self.lease * 1000)
        args: list[str | int] = [keys.member(""), token, lease_ms]
        deadline = time.monotonic() + wait
        while True:
            flat = self._lock_and_read(keys=self._keys(instance_id), args=args)
            if flat is not None:
                break
            if time.monotonic() + sleep > deadline:
                raise Unavailable(f"instance is busy being placed ({lock}); try again")
            time.sleep(sleep)
        done = threading.Event()
        renewer = threading.Thread(target=self._renewing, args=(lock, token, lease_ms, done), daemon=True)
        renewer.start()
        try:
            yield _seen(instance_id, flat)
        finally:
            done.set()
            self._release(keys=[lock], args=[token])

    def _renewing(self, lock: str, token: str, lease_ms: int, done: threading.Event) -> None:
        """Extend the lease every third of it until released, or until it is no longer ours."""
        while not done.wait(lease_ms / 3000):
            try:
                if not self._renew(keys=[lock], args=[token, lease_ms]):
                    return
            except redis.RedisError:
                continue  # Redis away for a moment: the lease may lapse; the epoch still fences

    @staticmethod
    def _keys(instance_id: str) -> list[str]:
        return [keys.activation_lock(instance_id), keys.instance_record(instance_id), keys.MEMBERS]


def _seen(instance_id: str, reply: object) -> Seen:
    flat = cast(list[str], reply)
    h = dict(zip(flat[2::2], flat[3::2], strict=True))
    return Seen(record_from_hash(instance_id, h) if h else None, flat[0] == "1", flat[1] == "1")
