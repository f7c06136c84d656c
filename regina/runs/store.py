"""A run's Redis record, from creation to cancel (SPEC §12); one Lua script per transition.

Every transition of a run is one round trip, merged with what the same request needs anyway:

- `open` (web, a chat): idle-timer touch + member liveness + Idempotency-Key check + the
  `whenBusy` policy + the `queued` record;
- `steer` (web): idle-timer touch + Idempotency-Key check + the queued steering message;
- `begin` (worker, start of a step): the owner's epoch fence + last published seq + `running`
  + the instance's usage so far + taking the waiting steering messages;
- `cancel` (web): a queued run ends at once; a running one is flagged and announced;
- the finish is `regina.runs.stream.RunPublisher`'s script (events + status + instance usage).

Statuses: `queued · running · finished · failed · cancelled`. Timestamps are stored as epoch
seconds and shown as ISO 8601.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from regina import keys
from regina.clock import redis_now
from regina.errors import StaleEpoch
from regina.fencing import is_stale_error
from regina.instances import LUA_TOUCH, LUA_TOUCH_EXISTING, InstanceRecord, record_from_hash
from regina.redis_conn import script
from regina.runs.cancel import announce
from regina.runs.steering import decode_all, encode
from regina.runs.stream import RUNNING_TTL, PendingRead
from regina.runtime.sink import RunProgress, Steer

ENDED = frozenset({"finished", "failed", "cancelled"})
#: The run record's field naming the delegated run it waits for (regina/delegation.py).
DELEGATE_FIELD = "delegate"
WhenBusy = Literal["queue", "steer", "reject"]

# Drop finished or expired runs from the front of the instance's unfinished set; leaves `busy`
# set to the oldest queued or running run id, or false.
_FRONT = """
local function front(runs_key, run_prefix)
  while true do
    local first = redis.call('ZRANGE', runs_key, 0, 0)
    if #first == 0 then return false end
    local st = redis.call('HGET', run_prefix .. first[1], 'status')
    if st == 'queued' or st == 'running' then return first[1] end
    redis.call('ZREM', runs_key, first[1])
  end
end
"""

# An Idempotency-Key seen before: {'dup', first request's id} with the same body hash,
# {'mismatch'} with another; false when the key is new. Stored as "<body hash> <id>".
_CLAIMED = """
local function claimed(key, body_hash)
  local prev = redis.call('GET', key)
  if not prev then return false end
  local sep = string.find(prev, ' ', 1, true)
  if string.sub(prev, 1, sep - 1) ~= body_hash then return {'mismatch'} end
  return {'dup', string.sub(prev, sep + 1)}
end
"""

# `claimed` for a chat's key, whose id is a run's: {'expired', run id} when that run's record is
# gone (a run answering a key is kept as long as the key, but a record can still be evicted, or
# date from before that): nothing can answer the retry as the first request was answered, and
# following a run that does not exist would only wait (and wake its instance) for nothing.
_CLAIMED_RUN = (
    _CLAIMED
    + """
local function claimed_run(key, body_hash, run_prefix)
  local earlier = claimed(key, body_hash)
  if earlier and earlier[1] == 'dup' and redis.call('EXISTS', run_prefix .. earlier[2]) == 0 then
    return {'expired', earlier[2]}
  end
  return earlier
end
"""
)

# KEYS: instance record, run record, instance runs, steering list, instance queue
# [, idempotency key]. ARGV: now, instanceId, run ttl, runId, whenBusy, steer entry, idempotency
# body hash, idempotency ttl, member prefix, run prefix, most runs open at once
# (limits.maxQueuedRuns), the step's broker message ('' = the caller publishes it), ready-list
# prefix, most steering messages waiting (limits.maxSteering), the open runs index
# (`keys.RUNS_OPEN`: the lost-run sweep's, regina/runs/lost.py). The instance's one HGETALL
# answers whether it exists, who owns it and what the reply carries. A started instance whose
# member lives gets the step message here, and its member the queue's name on its ready list
# (workers/transport.py): no publish round trip of its own. Such a message has the run's id as its
# delivery tag (regina/dispatch.py): the run record says so (`tagged`, read by `_CANCEL`).
# The same call run again (redis-py sends it again after a lost reply, and so does
# `_open_then_read`) finds its run record, or its steering entry, and answers as before.
# A missing instance answers {'missing'}, unless the Idempotency-Key answered a request before
# (the instance was deleted since): that retry answers as any other (`dup`, `mismatch`, `expired`).
# A steer into the busy run with a key makes that run the key's answer: it is kept as long as the
# key (`keep`, which every script that ends a run honours), as a run this script creates is.
_OPEN = (
    _FRONT
    + _CLAIMED_RUN
    + LUA_TOUCH
    + """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then  -- no such instance (any more): a key it answered still answers the same
  return (KEYS[6] and claimed_run(KEYS[6], ARGV[7], ARGV[10])) or {'missing'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then  -- this open ran already (its reply was lost): answer the same
  local alive = touch(KEYS[1], rec, ARGV[9], ARGV[1])
  table.insert(rec, 1, redis.call('HGET', KEYS[2], 'tagged') or '0')
  table.insert(rec, 1, alive)
  table.insert(rec, 1, 'ok')
  return rec
end
if KEYS[6] then
  local earlier = claimed_run(KEYS[6], ARGV[7], ARGV[10])
  if earlier then return earlier end
end
local alive = touch(KEYS[1], rec, ARGV[9], ARGV[1])
local busy = front(KEYS[3], ARGV[10])
if busy and ARGV[5] == 'reject' then return {'busy', busy} end
local steer = busy and ARGV[5] == 'steer'
if steer and redis.call('LPOS', KEYS[4], ARGV[6]) then return {'steered', busy} end  -- queued by this open already
-- A run being cancelled takes no steering: the message is a run of its own, queued behind.
if steer and redis.call('HEXISTS', ARGV[10] .. busy, 'cancel') == 0 then
  if redis.call('LLEN', KEYS[4]) >= tonumber(ARGV[14]) then return {'steer-full', busy} end
  redis.call('RPUSH', KEYS[4], ARGV[6])
  if KEYS[6] then
    redis.call('SET', KEYS[6], ARGV[7] .. ' ' .. busy, 'EX', ARGV[8])
    local busy_rec = ARGV[10] .. busy  -- it answers this key's retries: kept as long as the key
    if tonumber(redis.call('HGET', busy_rec, 'keep') or '0') < tonumber(ARGV[8]) then
      redis.call('HSET', busy_rec, 'keep', ARGV[8])
    end
  end
  return {'steered', busy}
end
if busy and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[11]) then return {'full', busy} end
local pushed = '0'
local member
if ARGV[12] ~= '' and alive == '1' then
  local status
  for i = 1, #rec, 2 do
    if rec[i] == 'status' then status = rec[i + 1] elseif rec[i] == 'member' then member = rec[i + 1] end
  end
  if status == 'started' then pushed = '1' end
end
if pushed == '1' then
  redis.call('HSET', KEYS[2], 'instanceId', ARGV[2], 'status', 'queued', 'createdAt', ARGV[1], 'tagged', '1')
else
  redis.call('HSET', KEYS[2], 'instanceId', ARGV[2], 'status', 'queued', 'createdAt', ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', ARGV[15], ARGV[1], ARGV[4])
if KEYS[6] then
  redis.call('SET', KEYS[6], ARGV[7] .. ' ' .. ARGV[4], 'EX', ARGV[8])
  -- the run answers its key's retries: kept as long; a lost run lets go of its key (`idem`)
  redis.call('HSET', KEYS[2], 'keep', ARGV[8], 'idem', KEYS[6])
end
if pushed == '1' then
  redis.call('LPUSH', KEYS[5], ARGV[12])
  redis.call('LPUSH', ARGV[13] .. member, KEYS[5])
end
table.insert(rec, 1, pushed)
table.insert(rec, 1, alive)
table.insert(rec, 1, 'ok')
return rec
"""
)

# KEYS: instance record, steering list[, idempotency key]. ARGV: now, steer entry, steerId,
# most messages waiting (limits.maxSteering), idempotency body hash, idempotency ttl. A full list
# answers {'full'} and writes nothing; an entry queued already (the same call run again after a
# lost reply: each entry holds its own steerId) answers {'ok'} and writes nothing. The key is looked
# at first: its retry answers the same steerId also once the instance is deleted ({'missing'} is
# for a request the key did not answer before).
_STEER = (
    _CLAIMED
    + LUA_TOUCH_EXISTING
    + """
if KEYS[3] then  -- first: a key answered before answers the same, also once the instance is gone
  local earlier = claimed(KEYS[3], ARGV[5])
  if earlier then return earlier end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('LPOS', KEYS[2], ARGV[2]) then return {'ok', ARGV[3]} end  -- queued by this call already
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then return {'full'} end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. ARGV[3], 'EX', ARGV[6]) end
touch_existing(KEYS[1], true)
redis.call('RPUSH', KEYS[2], ARGV[2])
return {'ok', ARGV[3]}
"""
)

# Move every waiting steering message into the run's journal and return them (KEYS: steering
# list, run journal; ARGV: retention). The journal lets a step redelivered after a crash take
# again what its first attempt took (the host drops those already in the history).
_TAKE_FN = """
local function take(list_key, journal_key, ttl)
  local taken = redis.call('LRANGE', list_key, 0, -1)
  if #taken > 0 then
    for i = 1, #taken, 1000 do redis.call('RPUSH', journal_key, unpack(taken, i, math.min(i + 999, #taken))) end
    redis.call('EXPIRE', journal_key, ttl)
    redis.call('DEL', list_key)
  end
  return taken
end
"""

# The take of a running step (KEYS: steering list, run journal, instance record; ARGV: retention,
# journal entries the step has seen, the owner's epoch or '' unfenced): what the journal holds past
# those, so that the same call run again (its reply lost) returns what the first run took. A stale
# owner (paused after its last check) takes nothing: error STALE.
_TAKE = (
    _TAKE_FN
    + """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[3] then return redis.error_reply('STALE') end
take(KEYS[1], KEYS[2], ARGV[1])
return redis.call('LRANGE', KEYS[2], ARGV[2], -1)
"""
)

# KEYS: instance record, run events, run record, steering list, run journal. ARGV: epoch, now,
# instanceId, retention. A stale owner, an ended run or an expired record (status '') takes
# nothing and writes nothing; a run flagged for cancel takes no steering. A queued run gets
# `startedAt`; a running one is a step delivered again (its worker died, or lost the instance):
# it keeps its first `startedAt` (maxSecondsPerRun counts from there) and counts the delivery
# (`attempts`, the first one implied; `begunAt` is this call's `now`, so that the same call run
# again after a lost reply counts nothing more). Returns {'run', seq, previous status, cancel,
# prompt, completion, spent, elapsed, attempts, n, <n journal entries>, <taken…>}: `spent` is
# what the earlier attempts recorded (`RunProgress.encode`, '' for none), `elapsed` the seconds
# since the first start.
# A function (KEYS and ARGV its parameters): the worker's take of a step runs it too
# (workers/transport.py, `BEGIN_FN`).
BEGIN_FN = (
    _TAKE_FN
    + """
local function begin(KEYS, ARGV)
local inst = redis.call('HMGET', KEYS[1], 'epoch', 'promptTokens', 'completionTokens')
if inst[1] ~= ARGV[1] then return {'stale'} end
local rec = redis.call('HMGET', KEYS[3], 'status', 'cancel', 'startedAt', 'begunAt', 'attempts', 'spent')
local status = rec[1]
local seq = '0'
if status ~= 'queued' then  -- only a run that started (or ended) can have published events
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then seq = string.match(last[1][1], '%-(%d+)$') end
end
if not status then return {'ended', seq, ''} end
if status == 'finished' or status == 'failed' or status == 'cancelled' then return {'ended', seq, status} end
local attempts, elapsed = tonumber(rec[5] or '1'), '0'
if status == 'queued' or not rec[3] then
  redis.call('HSET', KEYS[3], 'instanceId', ARGV[3], 'status', 'running', 'startedAt', ARGV[2])
else
  if rec[3] ~= ARGV[2] and rec[4] ~= ARGV[2] then  -- not this same call run again
    attempts = attempts + 1
    redis.call('HSET', KEYS[3], 'attempts', attempts, 'begunAt', ARGV[2])
  end
  elapsed = string.format('%.3f', math.max(0, tonumber(ARGV[2]) - tonumber(rec[3])))
end
local earlier = {}
if status == 'running' then earlier = redis.call('LRANGE', KEYS[5], 0, -1) end
local out = {'run', seq, status, rec[2] or '', inst[2] or '0', inst[3] or '0', rec[6] or '', elapsed,
  tostring(attempts), tostring(#earlier)}
for _, v in ipairs(earlier) do out[#out + 1] = v end
if rec[2] then return out end
for _, v in ipairs(take(KEYS[4], KEYS[5], ARGV[4])) do out[#out + 1] = v end
return out
end
"""
)
_BEGIN = BEGIN_FN + "return begin(KEYS, ARGV)"

# `end_cancelled(record, events, now, retention, head, tail)`: a run's end as `cancelled`, its
# finish event (head .. seq .. tail) at the stream's next seq, both kept `retention` seconds, or
# as long as the Idempotency-Key the run answers (`keep`).
_END_CANCELLED_FN = """
local function end_cancelled(rec, events, now, retention, head, tail)
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  local seq = 1
  if #last > 0 then seq = tonumber(string.match(last[1][1], '%-(%d+)$')) + 1 end
  redis.call('XADD', events, '0-' .. seq, 'e', head .. seq .. tail)
  redis.call('HSET', rec, 'status', 'cancelled', 'finishedAt', now, 'finishReason', 'cancelled')
  local keep = math.max(tonumber(retention), tonumber(redis.call('HGET', rec, 'keep') or '0'))
  redis.call('EXPIRE', rec, keep)
  redis.call('EXPIRE', events, keep)
end
"""

#: A `cancelled` finish event's JSON up to its seq (the scripts add the seq and the rest).
_CANCELLED_HEAD = (
    '{"type":"finish","finishReason":"cancelled","text":"","usage":{"promptTokens":0,"completionTokens":0},"seq":'
)

# KEYS: run record, run events, instance runs, the instance queue's unacked tags, instance
# record (a deleted instance's queue gets no tag set: nothing would ever remove it). ARGV: now,
# retention, runId, event JSON head (up to "seq":), event JSON tail (after the seq number). A
# queued run leaves the instance's open runs here while its step may already be taken (waiting for
# the one before it); a step tagged with the run's id (`tagged`, see `_OPEN`) goes into the queue's
# tag set instead, where a dead owner's steps are also looked for (workers/unacked.py).
# The same call run again (redis-py sends it again after a lost reply) finds its own `now` in the
# record's `cancel` and answers `cancelled` again, not "already ended".
_CANCEL = (
    _END_CANCELLED_FN
    + """
local rec = redis.call('HMGET', KEYS[1], 'status', 'tagged', 'cancel', 'startedAt')
local st = rec[1]
if not st then return {'missing'} end
if st == 'finished' or st == 'failed' or st == 'cancelled' then
  -- This cancel ran already (its reply was lost; `now` is its token): answer as it did.
  if st == 'cancelled' and rec[3] == ARGV[1] then return {'cancelled', rec[4] and 'running' or 'queued'} end
  return {'ended', st}
end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
if st ~= 'queued' then
  redis.call('PUBLISH', ARGV[6], ARGV[3])
  return {'cancelled', st}
end
end_cancelled(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[3])
if rec[2] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then redis.call('SADD', KEYS[4], ARGV[3]) end
return {'cancelled', st}
"""
)


# KEYS: instance runs. ARGV: now, retention, run record prefix, cancel channel, the `cancelled`
# finish event's JSON up to its seq (`_CANCELLED_HEAD`). Ends every run
# of the instance not ended yet with a `cancelled` finish (the instance is being deleted: none
# of them can run any more), announces the running ones to their worker, empties the set.
# Returns how many it ended.
_END_ALL = (
    _END_CANCELLED_FN
    + """
local ended = 0
for _, run_id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local rec = ARGV[3] .. run_id
  local st = redis.call('HGET', rec, 'status')
  if st == 'queued' or st == 'running' then
    redis.call('HSET', rec, 'cancel', ARGV[1])
    end_cancelled(rec, rec .. ':events', ARGV[1], ARGV[2], ARGV[5], ',"runId":"' .. run_id .. '"}')
    if st == 'running' then redis.call('PUBLISH', ARGV[4], run_id) end
    ended = ended + 1
  end
end
redis.call('DEL', KEYS[1])
return ended
"""
)

# KEYS: instance record, run record. ARGV: epoch, the run's progress (`RunProgress.encode`).
# Records the progress on the running run while the epoch is current; 0 (nothing written) when
# it is not. The fence check before a tool call without a journal (`storage.type` null).
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'status') == 'running' then redis.call('HSET', KEYS[2], 'spent', ARGV[2]) end
return 1
"""

# KEYS: idempotency key. ARGV: the value that names the run. Deletes the key only if it still
# names that run.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Opened:
    """What `open` did: `ok` (a new run), `dup` (an Idempotency-Key retry: `run_id` is the
    first request's run), `expired` (such a retry whose run's record is gone: `run_id` names it),
    `steered` (`run_id` is the busy run that got the message), `busy`
    (reject: `run_id` is the busy run), `full` (limits.maxQueuedRuns runs open already),
    `steer-full` (whenBusy steer: limits.maxSteering messages wait already),
    `mismatch` (the key was used with another body), `missing` (no such instance)."""

    kind: Literal["ok", "dup", "expired", "steered", "busy", "full", "steer-full", "mismatch", "missing"]
    run_id: str = ""
    record: InstanceRecord | None = None
    alive: bool = False
    queued: bool = False
    """The step message given to `open` is on the instance's queue (its owner was notified)."""
    pending: PendingRead | None = None
    """The first wait for the new run's events, sent with the open (`open`'s `read_events`)."""


@dataclass(frozen=True)
class Begun:
    """What the start of a step found: `stale` (not our instance), `ended` (nothing to do),
    `run` (go on, with `steered` taken for it)."""

    kind: Literal["stale", "ended", "run"]
    seq: int = 0
    previous_status: str = ""
    cancel_requested: bool = False
    instance_tokens: int = 0
    steered: list[Steer] = field(default_factory=list)
    earlier: list[Steer] = field(default_factory=list)
    """What a crashed earlier attempt of this run had taken (some may be in the history)."""
    spent: RunProgress = field(default_factory=RunProgress)
    """Steps and tokens the earlier attempts of this run recorded (their completed model calls)."""
    elapsed: float = 0.0
    """Seconds since the run's first start (0 on its first delivery)."""
    attempts: int = 1
    """Deliveries of the run's step that started it, this one included."""


def parse_begun(flat: list[str]) -> Begun:
    """`Begun` from the reply of `BEGIN_FN`'s `begin`."""
    if flat[0] == "stale":
        return Begun("stale")
    if flat[0] == "ended":
        return Begun("ended", int(flat[1]), flat[2])
    return Begun(
        "run",
        seq=int(flat[1]),
        previous_status=flat[2],
        cancel_requested=bool(flat[3]),
        instance_tokens=int(flat[4]) + int(flat[5]),
        spent=RunProgress.decode(flat[6]),
        elapsed=float(flat[7]),
        attempts=int(flat[8]),
        earlier=decode_all(flat[10 : 10 + int(flat[9])]),
        steered=decode_all(flat[10 + int(flat[9]) :]),
    )


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key claim: where it is stored, the request body's hash, how long."""

    key: str
    body_hash: str
    ttl: int = 86_400


class RunStore:
    """Creates, starts, cancels and reads runs; the only writer of `regina:run:*` records besides
    the finish script of `RunPublisher`."""

    def __init__(
        self, client: redis.Redis, retention: float = 3600, max_backlog: int = 32, max_steering: int = 100
    ) -> None:
        self.r = client
        self.retention = int(retention)
        self.max_steering = max_steering
        self.max_backlog = max_backlog
        self._open = script(client, _OPEN)
        self._steer = script(client, _STEER)
        self._begin = script(client, _BEGIN)
        self._take = script(client, _TAKE)
        self._cancel = script(client, _CANCEL)
        self._release = script(client, _RELEASE)
        self._end_all = script(client, _END_ALL)
        self._progress = script(client, _PROGRESS)

    def open(
        self,
        instance_id: str,
        run_id: str,
        when_busy: WhenBusy = "queue",
        steer: Steer | None = None,
        idem: Idempotency | None = None,
        step_message: str = "",
        read_events: int | None = None,
    ) -> Opened:
        """Touch the instance and queue a run on it (or steer / reject per `when_busy`); with a
        `step_message`, also push it when the instance is started on a live member.

        `read_events` (ms): the first `XREAD … BLOCK` of the new run's events goes in the same
        write as the script (one round trip for the open and the first wait); an `ok` answer
        carries it unread as `pending`, which its caller reads or discards. Any other answer
        discards it (the connection is closed)."""
        run_keys = [
            keys.instance_record(instance_id),
            keys.run_record(run_id),
            keys.instance_runs(instance_id),
            keys.steering(instance_id),
            keys.instance_queue(instance_id),
        ] + ([idem.key] if idem else [])
        args = [
            repr(redis_now(self.r)),  # createdAt and the idle timer's touch (regina/clock.py)
            instance_id,
            str(self.retention + RUNNING_TTL),  # the record lives while the run may go on (its events too)
            run_id,
            when_busy,
            encode(steer) if steer else "",
            idem.body_hash if idem else "",
            str(idem.ttl if idem else 0),
            keys.MEMBER_PREFIX,
            keys.RUN_PREFIX,
            str(self.max_backlog),
            step_message,
            keys.member_ready(""),
            str(self.max_steering),
            keys.RUNS_OPEN,
        ]
        pending = None
        if read_events is None:
            flat = cast(list[str], self._open(keys=run_keys, args=args))
        else:
            flat, pending = self._open_then_read(run_keys, args, keys.run_events(run_id), read_events)
        kind = flat[0]
        if kind != "ok":
            if pending is not None:
                pending.discard()
            return Opened(cast(Any, kind), flat[1] if len(flat) > 1 else "")
        h = dict(zip(flat[3::2], flat[4::2], strict=True))
        return Opened("ok", run_id, record_from_hash(instance_id, h), flat[1] == "1", flat[2] == "1", pending)

    def _open_then_read(
        self, run_keys: list[str], args: list[str], events_key: str, block_ms: int
    ) -> tuple[list[str], PendingRead | None]:
        """The open script and an XREAD BLOCK of `events_key` from its start, written at once on
        one pooled connection; the script's answer, and the XREAD to read later. Without the
        script loaded in Redis (NOSCRIPT) or on a connection error, the open runs as usual (its
        loading and retries), without a pending read."""
        client: Any = self.r  # redis-py's connection-level calls are untyped
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(
                conn.pack_commands(
                    [
                        ("EVALSHA", self._open.sha, len(run_keys), *run_keys, *args),
                        ("XREAD", "COUNT", 500, "BLOCK", block_ms, "STREAMS", events_key, "0-0"),
                    ]
                )
            )
            flat = cast(list[str], client.parse_response(conn, "EVALSHA"))
        except (redis.exceptions.NoScriptError, redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            pool.release(conn)
            return cast(list[str], self._open(keys=run_keys, args=args)), None
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return flat, PendingRead(client, conn)

    def steer(self, instance_id: str, steer: Steer, idem: Idempotency | None = None) -> tuple[str, str]:
        """Queue a steering message; (`ok` | `dup` | `mismatch` | `missing` | `full`, steerId)."""
        run_keys = [keys.instance_record(instance_id), keys.steering(instance_id)] + ([idem.key] if idem else [])
        args = [repr(time.time()), encode(steer), steer.steer_id, str(self.max_steering)]
        if idem:
            args += [idem.body_hash, str(idem.ttl)]
        flat = cast(list[str], self._steer(keys=run_keys, args=args))
        return flat[0], flat[1] if len(flat) > 1 else ""

    def begin(self, instance_id: str, run_id: str, epoch: int) -> Begun:
        """The start-of-step transaction of the run's owner (see `_BEGIN`)."""
        run_keys = [
            keys.instance_record(instance_id),
            keys.run_events(run_id),
            keys.run_record(run_id),
            keys.steering(instance_id),
            keys.run_steered(run_id),
        ]
        # Redis's clock: `startedAt` of a run redelivered to another worker is compared with it.
        args = [str(epoch), repr(redis_now(self.r)), instance_id, str(self.retention)]
        return parse_begun(cast(list[str], self._begin(keys=run_keys, args=args)))

    def take_steering(self, instance_id: str, run_id: str, seen: int, epoch: int | None = None) -> list[Steer]:
        """Take the waiting steering messages for a running run (kept in its journal): those of
        the journal past the `seen` first entries the step has had already. With `epoch`, only
        while it is the instance's (else StaleEpoch, nothing taken)."""
        try:
            taken = self._take(
                keys=[keys.steering(instance_id), keys.run_steered(run_id), keys.instance_record(instance_id)],
                args=[str(self.retention), str(seen), "" if epoch is None else str(epoch)],
            )
        except redis.ResponseError as exc:
            if is_stale_error(exc):
                raise StaleEpoch(f"instance {instance_id} moved on (epoch {epoch} is stale): steering refused") from exc
            raise
        return decode_all(cast(list[str], taken))

    def record_progress(self, instance_id: str, epoch: int, run_id: str, progress: str) -> bool:
        """Record a running run's progress (`RunProgress.encode()`) while `epoch` owns its
        instance; False (nothing written) when it does not (see `_PROGRESS`)."""
        run_keys = [keys.instance_record(instance_id), keys.run_record(run_id)]
        return bool(self._progress(keys=run_keys, args=[str(epoch), progress]))

    def end_all(self, instance_id: str) -> int:
        """End every run of the instance not ended yet, `cancelled` (its delete: they can no
        longer run, and their followers and `GET /runs/<id>` should say so); how many."""
        return int(
            self._end_all(
                keys=[keys.instance_runs(instance_id)],
                args=[
                    repr(redis_now(self.r)),
                    str(self.retention),
                    keys.RUN_PREFIX,
                    keys.CANCEL_CHANNEL,
                    _CANCELLED_HEAD,
                ],
            )
        )

    def cancel(self, run_id: str) -> tuple[bool, str]:
        """Cancel a run: (True, status before) or (False, its final status); KeyError if unknown.

        A queued run ends here at once with a `cancelled` finish; a running one is flagged and
        announced to every worker (its owner interrupts it).
        """
        instance_id = cast(str | None, self.r.hget(keys.run_record(run_id), "instanceId"))
        if instance_id is None:
            raise KeyError(run_id)
        tail = f',"runId":"{run_id}"}}'
        flat = cast(
            list[str],
            self._cancel(
                keys=[
                    keys.run_record(run_id),
                    keys.run_events(run_id),
                    keys.instance_runs(instance_id),
                    keys.unacked_of(keys.instance_queue(instance_id)),
                    keys.instance_record(instance_id),
                ],
                args=[repr(time.time()), str(self.retention), run_id, _CANCELLED_HEAD, tail, keys.CANCEL_CHANNEL],
            ),
        )
        if flat[0] == "missing":
            raise KeyError(run_id)
        if flat[0] == "cancelled" and flat[1] != "queued":
            return True, flat[1]
        return flat[0] == "cancelled", flat[1] if flat[0] == "ended" else "cancelled"

    def release_claim(self, claim: Idempotency, run_id: str) -> None:
        """Forget an Idempotency-Key claim that names `run_id` (the run did no work), so the
        key's retry opens a run of its own."""
        self._release(keys=[claim.key], args=[f"{claim.body_hash} {run_id}"])

    def info(self, run_id: str) -> dict[str, str]:
        """The raw run record ({} when unknown or expired)."""
        return cast(dict[str, str], self.r.hgetall(keys.run_record(run_id)))

    def cancel_orphaned_delegate(self, run_id: str) -> str | None:
        """For a redelivered step: cancel the delegated run its crashed attempt waited for (that
        `delegate` call gets "outcome unknown" and is not made again: nobody will read the answer,
        and the run would go on spending tokens and holding its instance); its id, or None."""
        child = cast(str | None, self.r.hget(keys.run_record(run_id), DELEGATE_FIELD))
        if not child:
            return None
        try:
            self.cancel(child)
        except KeyError:
            pass  # expired
        self.r.hdel(keys.run_record(run_id), DELEGATE_FIELD)
        return child

    def cancel_requested(self, run_id: str) -> bool:
        """True when someone asked to cancel the run (the durable copy of the announcement)."""
        return bool(self.r.hexists(keys.run_record(run_id), "cancel"))

    def running_runs(self, instance_ids: list[str]) -> dict[str, str | None]:
        """The oldest unfinished run of each instance (None when idle), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for iid in instance_ids:
            pipe.zrange(keys.instance_runs(iid), 0, 0)
        return {iid: (first[0] if first else None) for iid, first in zip(instance_ids, pipe.execute(), strict=True)}


__all__ = [
    "BEGIN_FN",
    "DELEGATE_FIELD",
    "ENDED",
    "Begun",
    "Idempotency",
    "Opened",
    "RunStore",
    "WhenBusy",
    "announce",
    "parse_begun",
]
