"""Instance metadata in Redis, so any web process can answer for any instance (SPEC §3, §6).

Ownership changes bump the instance's `epoch`; a worker writes state only while the epoch it
was given is still current (fencing, SPEC §12), enforced by small Lua scripts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from regina import keys
from regina.clock import redis_now

Status = Literal["started", "suspending", "suspended"]

_ID_AT = len(keys.instance_record("")) + 1

# Lua: the held index (keys.member_held): `hold(member, id, createdAt)` / `unhold(member, id)`.
# Every script that changes an instance's member or status keeps it in the same call, so the
# orphan sweep reads only the held sets of dead members (SPEC §6) and never every record.
LUA_HELD = f"""
local function unhold(member, id)
  if member and member ~= '' then redis.call('ZREM', '{keys.HELD_PREFIX}' .. member, id) end
end
local function hold(member, id, created)
  if member and member ~= '' then
    redis.call('ZADD', '{keys.HELD_PREFIX}' .. member, tonumber(created) or 0, id)
    redis.call('SADD', '{keys.HOLDERS}', member)
  end
end
local function reindex(key, status)
  local id = string.sub(key, {_ID_AT})
  local rec = redis.call('HMGET', key, 'member', 'createdAt')
  if status ~= 'suspended' then return hold(rec[1], id, rec[2]) end
  unhold(rec[1], id)
  -- Runs still open (one queued while it was suspending): the orphan sweep resumes it.
  if redis.call('ZCARD', key .. ':runs') > 0 then
    redis.call('SADD', '{keys.STRANDED}', '{keys.instance_queue("")}' .. id)
  end
end
"""

# Lua for the fenced writes: go on only if the record exists and its epoch equals ARGV[1], then
# `set_pairs([last])` HSETs the field/value pairs ARGV[2..last] (all when no `last`; a status
# among them updates the held index).
LUA_FENCED = (
    LUA_HELD
    + """
local function set_pairs(last)
  local status
  for i = 2, last or #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    if ARGV[i] == 'status' then status = ARGV[i + 1] end
  end
  if status then reindex(KEYS[1], status) end
end
local cur = redis.call('HGET', KEYS[1], 'epoch')
if not cur or cur ~= ARGV[1] then return 0 end
"""
)

# Set fields only if the record exists and its epoch equals ARGV[1]. Returns 1 or 0.
_FENCED_HSET = LUA_FENCED + "set_pairs() return 1"

# Give the instance to a member: bump epoch, set member + status, update the seed mapping and
# the held index, and push the member's attach command when given. KEYS: record, owner, the
# member's command queue. ARGV: member, status, expected epoch ('' = any), the command message
# ('' = none; written for the epoch after the expected one). Returns the new epoch, or -1 if the
# expected epoch did not match, or -2 if the record is gone.
_CLAIM = (
    LUA_HELD
    + f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
local cur = redis.call('HGET', KEYS[1], 'epoch')
if ARGV[3] ~= '' and cur ~= ARGV[3] then return -1 end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local prev = redis.call('HGET', KEYS[1], 'member')
if prev and prev ~= ARGV[1] then unhold(prev, string.sub(KEYS[1], {_ID_AT})) end
redis.call('HSET', KEYS[1], 'member', ARGV[1], 'status', ARGV[2])
reindex(KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
if ARGV[4] and ARGV[4] ~= '' then redis.call('LPUSH', KEYS[3], ARGV[4]) end
return epoch
"""
)

# Remove every key of the instance and its entries in the indexes. KEYS: record, the other keys
# to delete…; ARGV: instance id, then the sorted sets to remove it from.
_DELETE = (
    LUA_HELD
    + """
unhold(redis.call('HGET', KEYS[1], 'member'), ARGV[1])
redis.call('DEL', unpack(KEYS))
for i = 2, #ARGV do redis.call('ZREM', ARGV[i], ARGV[1]) end
return 1
"""
)


# Redis's clock as seconds since the epoch, for every timer (web and worker clocks may differ).
LUA_NOW = "local t = redis.call('TIME'); local now = t[1] .. '.' .. string.format('%06d', t[2])"

# Lua: `touch_existing(key[, known])` resets lastActive only if the record exists (a bare HSET
# would create a ghost record; `known`: the caller already read a field of it); 1 or 0.
LUA_TOUCH_EXISTING = f"""
local function touch_existing(key, known)
  if not known and redis.call('EXISTS', key) == 0 then return 0 end
  {LUA_NOW}
  redis.call('HSET', key, 'lastActive', now)
  return 1
end
"""

_TOUCH = LUA_TOUCH_EXISTING + "return touch_existing(KEYS[1])"

# Like _FENCED_HSET, and lastActive = Redis's TIME (no separate round trip for the clock).
_FENCED_TOUCH = (
    LUA_FENCED
    + LUA_NOW
    + """
redis.call('HSET', KEYS[1], 'lastActive', now)
set_pairs()
return 1
"""
)

# A new record at epoch 1, its indexes and the held index, stamped with Redis's clock, and the
# member's attach command when given. KEYS: record, owner, all instances, the definition's
# instances, the member's command queue. ARGV: instance id, definition id, member, the command
# message ('' = none).
_CREATE = (
    LUA_HELD
    + LUA_NOW
    + """
redis.call('HSET', KEYS[1], 'definitionId', ARGV[2], 'status', 'started', 'member', ARGV[3], 'epoch', '1',
  'createdAt', now, 'lastActive', now, 'backupVersion', '0')
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
hold(ARGV[3], ARGV[1], now)
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[4]) end
return now
"""
)

# Lua: `touch(key, rec, member_prefix, now)` resets the idle timer of the instance whose HGETALL
# `rec` holds (non-empty: the record exists) to `now` (Redis's clock as the caller keeps it,
# regina/clock.py), sets lastActive in `rec` too, and returns "1"|"0" (its member lives). One read
# serves existence, the member and the reply.
LUA_TOUCH = """
local function touch(key, rec, member_prefix, now)
  redis.call('HSET', key, 'lastActive', now)
  local alive, seen = '0', false
  for i = 1, #rec, 2 do
    if rec[i] == 'lastActive' then
      rec[i + 1], seen = now, true
    elseif rec[i] == 'member' and rec[i + 1] ~= '' and redis.call('EXISTS', member_prefix .. rec[i + 1]) == 1 then
      alive = '1'
    end
  end
  if not seen then rec[#rec + 1], rec[#rec + 2] = 'lastActive', now end
  return alive
end
"""

# Touch lastActive and return ["1"|"0" (member alive), field, value, …], or {} if there is no
# instance record. ARGV: now (Redis's clock, regina/clock.py), member key prefix.
_TOUCH_CHECK = (
    LUA_TOUCH
    + """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return {} end
table.insert(rec, 1, touch(KEYS[1], rec, ARGV[2], ARGV[1]))
return rec
"""
)


@dataclass(frozen=True)
class InstanceRecord:
    """What Redis knows about one instance."""

    instance_id: str
    definition_id: str
    status: Status
    member: str
    epoch: int
    created_at: float
    last_active: float
    backup_version: int
    vfs_bytes: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    backup_key: str = ""
    backup_seq: int = 0

    @property
    def usage(self) -> dict[str, int]:
        """Tokens the instance's runs spent so far (SPEC §12)."""
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens}

    def public(self, include_member: bool = False) -> dict[str, Any]:
        """The SPEC §4 JSON for this instance."""
        data: dict[str, Any] = {
            "instanceId": self.instance_id,
            "definitionId": self.definition_id,
            # The fleet view shows `suspending` as itself (SPEC §12); the plain view keeps §3's two.
            "status": self.status if include_member else ("suspended" if self.status == "suspended" else "started"),
            "createdAt": iso(self.created_at),
        }
        if include_member:
            data["member"] = self.member or None
            data["epoch"] = self.epoch
            data["lastActive"] = iso(self.last_active)
            data["lastActiveAt"] = data["lastActive"]
            data["vfsBytes"] = self.vfs_bytes
            data["usage"] = self.usage
        return data


def iso(ts: float) -> str:
    """An epoch timestamp as ISO 8601 UTC with milliseconds, like every resource shows it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def record_from_hash(instance_id: str, h: dict[str, str]) -> InstanceRecord:
    """An InstanceRecord from the fields of its Redis hash."""
    return InstanceRecord(
        instance_id=instance_id,
        definition_id=h.get("definitionId", ""),
        status=cast(Status, h.get("status", "suspended")),
        member=h.get("member", ""),
        epoch=int(h.get("epoch", 0)),
        created_at=float(h.get("createdAt", 0)),
        last_active=float(h.get("lastActive", 0)),
        backup_version=int(h.get("backupVersion", 0)),
        vfs_bytes=int(h.get("vfsBytes", 0)),
        prompt_tokens=int(h.get("promptTokens", 0)),
        completion_tokens=int(h.get("completionTokens", 0)),
        backup_key=h.get("backupKey", ""),
        backup_seq=int(h.get("backupSeq", 0)),
    )


def new_record(instance_id: str, definition_id: str, epoch: int = 1) -> InstanceRecord:
    """The record `InstanceStore.create` writes, as the worker attaching a spawn knows it."""
    return InstanceRecord(instance_id, definition_id, "started", "", epoch, 0.0, 0.0, 0, 0)


class InstanceStore:
    """Read and change instance records; every change an owner makes is fenced by epoch."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._fenced_hset = client.register_script(_FENCED_HSET)
        self._claim = client.register_script(_CLAIM)
        self._touch_check = client.register_script(_TOUCH_CHECK)
        self._touch = client.register_script(_TOUCH)
        self._delete = client.register_script(_DELETE)
        self._fenced_touch = client.register_script(_FENCED_TOUCH)
        self._create = client.register_script(_CREATE)

    def create(self, instance_id: str, definition_id: str, member: str, command: str | None = None) -> InstanceRecord:
        """Write a new record owned by `member` at epoch 1 (one round trip, Redis's clock);
        `command`: a message for the member's command queue, pushed in the same script."""
        instance_keys = [
            keys.instance_record(instance_id),
            keys.instance_owner(instance_id),
            keys.INSTANCES,
            keys.definition_instances(definition_id),
            keys.member_queue(member),
        ]
        now = str(self._create(keys=instance_keys, args=[instance_id, definition_id, member, command or ""]))
        fields = {"definitionId": definition_id, "member": member, "createdAt": now, "lastActive": now}
        return record_from_hash(instance_id, {**fields, "status": "started", "epoch": "1"})

    def now(self) -> float:
        """Redis's clock (seconds since the epoch): the one clock every idle timer uses."""
        sec, usec = self.r.time()
        return sec + usec / 1_000_000

    def get(self, instance_id: str) -> InstanceRecord | None:
        """The record, or None when the instance does not exist."""
        h = cast(dict[str, str], self.r.hgetall(keys.instance_record(instance_id)))
        return record_from_hash(instance_id, h) if h else None

    def touch_and_check(self, instance_id: str) -> tuple[InstanceRecord | None, bool]:
        """Reset the idle timer and return the record and whether its member lives (one round
        trip; a chat does the same inside `RunStore.open`)."""
        args = [repr(redis_now(self.r)), keys.MEMBER_PREFIX]
        flat = cast(list[str], self._touch_check(keys=[keys.instance_record(instance_id)], args=args))
        if not flat:
            return None, False
        alive = flat[0] == "1"
        h = dict(zip(flat[1::2], flat[2::2], strict=True))
        return record_from_hash(instance_id, h), alive

    def all(self, definition_id: str | None = None) -> list[InstanceRecord]:
        """Every instance (of one definition), oldest first."""
        key = keys.definition_instances(definition_id) if definition_id else keys.INSTANCES
        ids = cast(list[str], self.r.zrange(key, 0, -1))
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.hgetall(keys.instance_record(iid))
        return [record_from_hash(iid, h) for iid, h in zip(ids, pipe.execute(), strict=True) if h]

    def touch(self, instance_id: str) -> bool:
        """Reset the idle timer of an existing instance (a running loop); never creates a record.
        False when the instance is gone."""
        return bool(self._touch(keys=[keys.instance_record(instance_id)], args=[repr(time.time())]))

    def claim(
        self, instance_id: str, member: str, expected_epoch: int | None = None, command: str | None = None
    ) -> int:
        """Hand the instance to `member` with a new epoch; returns it (-1 stale, -2 gone).
        `command`: a message for the member's command queue, pushed only when the claim succeeds
        (it can name the new epoch: `expected_epoch` + 1)."""
        return int(
            self._claim(
                keys=[keys.instance_record(instance_id), keys.instance_owner(instance_id), keys.member_queue(member)],
                args=[member, "started", "" if expected_epoch is None else str(expected_epoch), command or ""],
            )
        )

    def is_held_by(self, instance_id: str, member: str, epoch: int | None = None) -> bool:
        """The instance exists, is `member`'s (at `epoch`, when given) and is not being deleted."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(keys.instance_record(instance_id), ["member", "epoch"])
        pipe.exists(keys.deleting(instance_id))
        (owner, current), deleting = pipe.execute()
        return bool(owner == member and not deleting and (epoch is None or current == str(epoch)))

    def fenced_set(self, instance_id: str, epoch: int, **fields: str | int | float) -> bool:
        """Set fields only while `epoch` is current; False means the caller lost the instance."""
        return bool(self._fenced_hset(keys=[keys.instance_record(instance_id)], args=_fenced_args(epoch, fields)))

    def fenced_set_many(self, changes: list[tuple[str, int, dict[str, str | int]]]) -> list[bool]:
        """`fenced_set` of several instances (id, epoch, fields) in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for instance_id, epoch, fields in changes:
            self._fenced_hset(keys=[keys.instance_record(instance_id)], args=_fenced_args(epoch, fields), client=pipe)
        return [bool(ok) for ok in pipe.execute()]

    def fenced_touch(self, instance_id: str, epoch: int, **fields: str | int) -> bool:
        """`fenced_set` that also resets lastActive to Redis's clock, in one round trip."""
        return bool(self._fenced_touch(keys=[keys.instance_record(instance_id)], args=_fenced_args(epoch, fields)))

    def last_active_many(self, instance_ids: list[str]) -> dict[str, float]:
        """lastActive of several instances in one round trip (the idle sweep)."""
        pipe = self.r.pipeline(transaction=False)
        for iid in instance_ids:
            pipe.hget(keys.instance_record(iid), "lastActive")
        return {iid: float(v or 0) for iid, v in zip(instance_ids, pipe.execute(), strict=True)}

    def delete(self, instance_id: str, definition_id: str) -> None:
        """Remove every key of the instance and its entries in the indexes (one script)."""
        self._delete(
            keys=[
                keys.instance_record(instance_id),
                keys.instance_owner(instance_id),
                keys.steering(instance_id),
                keys.activation_lock(instance_id),
                keys.instance_runs(instance_id),
                keys.delegates(instance_id),
                keys.journal(instance_id),
            ],
            args=[instance_id, keys.INSTANCES, keys.definition_instances(definition_id)],
        )

    def held(self, member_id: str) -> list[str]:
        """Ids of the instances `member_id` holds (started or suspending), oldest first."""
        return cast(list[str], self.r.zrange(keys.member_held(member_id), 0, -1))


def _fenced_args(epoch: int, fields: Mapping[str, str | int | float]) -> list[str]:
    """A fenced write's ARGV: the epoch, then field/value pairs (floats as `repr`, exact)."""
    args = [str(epoch)]
    for k, v in fields.items():
        args += [k, repr(v) if isinstance(v, float) else str(v)]
    return args
