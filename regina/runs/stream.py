"""Run events through Redis Streams: the worker appends, any web process reads (SPEC §4, §12).

Each run's events live in `regina:run:<runId>:events` with entry ids "0-<seq>", so a client
that lost its connection re-attaches "after seq N" and gets every later event exactly once and
in order. The stream outlives the run by `retention` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

import orjson
import redis

from regina import keys
from regina.clock import redis_now
from regina.errors import StaleEpoch
from regina.redis_conn import script
from regina.runs.ack import CURRENT_DELIVERY
from regina.secrets import redact

#: Events whose fields are text and numbers only (every run's delta and end): dumped with orjson.
_PLAIN_EVENTS = frozenset({"text-delta", "finish"})

TERMINAL = frozenset({"finish", "error"})
#: Seconds a run's event stream lives past its first event while the run has not ended (plus
#: runRetention): a bound for runs that never end, far above any run a client waits for.
RUNNING_TTL = 86_400

# KEYS: run events, run record, instance record, instance runs, instance VFS journal, the open runs'
# index (regina/runs/lost.py)[, steering list, run journal][, unacked index, unacked hash, the
# queue's unacked tags]. ARGV: retention,
# finishedAt, status, finishReason, promptTokens, completionTokens, error, runId, fence epoch
# ('' = unfenced), steering check ('' = none; else KEYS 7-8 are given and this is how many run
# journal entries the step has had: more in the journal means this call took them already and
# its reply was lost, and they are returned again), delivery tag to acknowledge ('' = none:
# no last three KEYS), the run's progress (`RunProgress.encode`, '' = none), VFS journal seq,
# number N of VFS journal entries, the N entries, number G of steering entries to give back (G > 0:
# KEYS 7-8 are given), the G entries, most events kept (MAXLEN), then pairs of
# (entry id, event JSON). A stale epoch (the instance moved to another
# owner) writes nothing: error STALE (SPEC §6). The VFS journal entries are appended first
# (regina/journal.py: durable before the client hears back, in this round trip rather than one of
# their own). With a steering list that holds messages, takes them (copying them to the run's
# steered list), records the run's progress in its record (`spent`: the steps and tokens a
# redelivered attempt goes on from, with the step's answer shipped in the same call) and returns
# them without publishing; otherwise appends the entries, ends the run
# record, adds the run's tokens to the instance's usage and resets its idle timer to finishedAt
# (the run's last touch; Redis's clock as the worker keeps it, regina/clock.py) and records the
# journal's seq, in one HSET (one write of the instance record per chat), acknowledges the step's
# delivery (regina/runs/ack.py; a tag that is the run's id was never in the queue's tag set, see
# workers/transport.py), puts the steering entries to give back (taken by the run, never saved to
# its transcript) at the head of the instance's steering list, oldest first, for its next run —
# only when this call ends the run, so a run's end gives them back once — and returns {}. A run
# flagged for cancel (`cancel` in its record: the
# client was told `{"cancelled": true}`) that would end `finished` ends `cancelled` instead, its
# terminal event's finishReason "cancelled", and takes no steering (left for the next run):
# the cancel may have landed where its worker could not interrupt the run (after the last model
# call, or before the step was registered for the announcement).
_FINISH = """
local inst = redis.call('HMGET', KEYS[3], 'epoch', 'promptTokens', 'completionTokens')
if ARGV[9] ~= '' and inst[1] ~= ARGV[9] then
  return redis.error_reply('STALE')
end
if ARGV[10] ~= '' and redis.call('LLEN', KEYS[8]) > tonumber(ARGV[10]) then
  return redis.call('LRANGE', KEYS[8], ARGV[10], -1)  -- taken by this call already (its reply was lost)
end
local nj = tonumber(ARGV[14])
for i = 15, 14 + nj, 1000 do
  redis.call('RPUSH', KEYS[5], unpack(ARGV, i, math.min(i + 999, 14 + nj)))
end
local ng = tonumber(ARGV[15 + nj])
local mx = 16 + nj + ng  -- MAXLEN; the event pairs follow it
local function settle()  -- the step's delivery acknowledged
  if ARGV[11] ~= '' then
    redis.call('ZREM', KEYS[#KEYS - 2], ARGV[11])
    redis.call('HDEL', KEYS[#KEYS - 1], ARGV[11])
    if ARGV[11] ~= ARGV[8] then redis.call('SREM', KEYS[#KEYS], ARGV[11]) end
  end
end
local status, reason = ARGV[3], ARGV[4]
local flags = redis.call('HMGET', KEYS[2], 'cancel', 'keep', 'status')
local keep = math.max(tonumber(ARGV[1]), tonumber(flags[2] or '0'))
if flags[3] == 'finished' or flags[3] == 'failed' or flags[3] == 'cancelled' then
  settle()  -- ended already (its instance's delete ended it): its end is written once
  return {}
end
local cancelled = status == 'finished' and flags[1] ~= false
if cancelled then status = 'cancelled'; reason = 'cancelled' end
if ARGV[10] ~= '' and not cancelled then
  local steered = redis.call('LRANGE', KEYS[7], 0, -1)
  if #steered > 0 then
    if nj > 0 then redis.call('HSET', KEYS[3], 'journalSeq', ARGV[13]) end
    if ARGV[12] ~= '' then redis.call('HSET', KEYS[2], 'spent', ARGV[12]) end
    for i = 1, #steered, 1000 do redis.call('RPUSH', KEYS[8], unpack(steered, i, math.min(i + 999, #steered))) end
    redis.call('EXPIRE', KEYS[8], ARGV[1])
    redis.call('DEL', KEYS[7])
    return steered
  end
end
local terminal = ARGV[#ARGV]
if cancelled then  -- the terminal event is the last: its first finishReason is its own field
  local was = '"finishReason":"' .. ARGV[4] .. '"'
  local at = string.find(terminal, was, 1, true)
  if at then
    terminal = string.sub(terminal, 1, at - 1) .. '"finishReason":"cancelled"' .. string.sub(terminal, at + #was)
  end
end
for i = mx + 1, #ARGV - 2, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[mx], ARGV[i], 'e', ARGV[i + 1])
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[mx], ARGV[#ARGV - 1], 'e', terminal)
redis.call('EXPIRE', KEYS[1], keep)
local run = {'status', status, 'finishedAt', ARGV[2], 'finishReason', reason,
  'promptTokens', ARGV[5], 'completionTokens', ARGV[6]}
if ARGV[7] ~= '' then run[11] = 'error'; run[12] = ARGV[7] end
redis.call('HSET', KEYS[2], unpack(run))
redis.call('EXPIRE', KEYS[2], keep)
if inst[1] then  -- every instance record has an epoch: none means no record (never create one)
  local fields = {'lastActive', ARGV[2],
    'promptTokens', string.format('%d', tonumber(inst[2] or '0') + tonumber(ARGV[5])),
    'completionTokens', string.format('%d', tonumber(inst[3] or '0') + tonumber(ARGV[6]))}
  if nj > 0 then fields[7] = 'journalSeq'; fields[8] = ARGV[13] end
  redis.call('HSET', KEYS[3], unpack(fields))
  for i = 15 + nj + ng, 16 + nj, -1 do redis.call('LPUSH', KEYS[7], ARGV[i]) end
end
redis.call('ZREM', KEYS[4], ARGV[8])
redis.call('ZREM', KEYS[6], ARGV[8])  -- the lost-run sweep has nothing to look at
settle()
return {}
"""

# An entry already in the stream (the same batch run again after a lost reply) is skipped.
# KEYS: run events stream, instance record. ARGV: epoch, TTL, most events kept, then pairs of
# (entry id, event JSON). The batch that creates the stream (its first entry is "0-1") gives it a
# TTL (RUNNING_TTL + retention), so the events of a run that never finishes (its worker killed,
# its instance deleted) still expire; the finish script sets runRetention at the end.
_XADD_FENCED = """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
for i = 4, #ARGV, 2 do
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[i], 'e', ARGV[i + 1])
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
    return added
  end
end
if ARGV[4] == '0-1' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# A buffered run's events written out before its end (regina/durable_run.py: after a step that
# ran tools, and with a steering receipt), riding on the write the step makes there anyway.
# KEYS: run events, instance record, run record, instance VFS journal. ARGV: fence epoch, TTL of
# a new stream (as `_XADD_FENCED`), most events kept (MAXLEN), VFS journal seq, the run's
# progress (`RunProgress.encode`, '' = none), number N of VFS journal entries, the N entries, then
# pairs of (entry id, event JSON). A stale epoch writes nothing (error STALE). The VFS journal
# entries go first and the progress in the run's record, as `regina/journal.py`'s flush does; the
# events only while the run is `running` (a run ended meanwhile, by its instance's delete, keeps
# its end as its last event; 0 is returned). An entry already in the stream (the same call run
# again after a lost reply) is skipped.
_WRITE_PENDING = """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
local nj = tonumber(ARGV[6])
for i = 7, 6 + nj, 1000 do
  redis.call('RPUSH', KEYS[4], unpack(ARGV, i, math.min(i + 999, 6 + nj)))
end
if nj > 0 then redis.call('HSET', KEYS[2], 'journalSeq', ARGV[4]) end
if redis.call('HGET', KEYS[3], 'status') ~= 'running' then return 0 end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'spent', ARGV[5]) end
for i = 7 + nj, #ARGV, 2 do
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[i], 'e', ARGV[i + 1])
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
    return added
  end
end
if ARGV[7 + nj] == '0-1' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class VfsJournal(Protocol):
    """An instance's VFS changes not in Redis yet (`regina.journal.JournalVFS`): a run's terminal
    script ships them, so what the client is told about is durable without a round trip more."""

    def ship(self) -> tuple[int, list[str]]:
        """(last seq, the pending entries), taken."""
        ...

    def give_back(self, entries: list[str]) -> None:
        """Put entries whose shipping failed back in front of the pending ones."""
        ...


def final_status(event: dict[str, Any]) -> str:
    """The run status a terminal event ends the run in."""
    if event.get("type") == "error":
        return "failed"
    return "cancelled" if event.get("finishReason") == "cancelled" else "finished"


class RunPublisher:
    """Appends one run's events with increasing sequence numbers (used inside the worker)."""

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        instance_id: str,
        retention: float = 3600,
        seq: int | None = None,
        buffered: bool = False,
        batch_window: float | None = None,
        epoch: int | None = None,
        max_events: int = 50_000,
    ) -> None:
        self.r = client
        #: Most events the run's stream keeps (XADD MAXLEN): a run cannot grow Redis without bound.
        self.max_events = max_events
        self.run_id = run_id
        self.instance_id = instance_id
        self.key = keys.run_events(run_id)
        self.retention = int(retention)
        # A redelivered run (its worker died) continues after the events already published.
        self.seq = last_seq(client, run_id) if seq is None else seq
        # Buffered: nobody watches this run live (sync chat), so its events go out in one
        # round trip with the terminal one instead of one round trip each — or, when the run
        # goes on past a step boundary, with the write made there (`write_pending`).
        self.buffered = buffered
        self._pending: list[tuple[int, str]] = []
        self._finish_script = script(client, _FINISH)
        # Batched (streamed runs): text deltas go out from a sender thread (a greenlet in workers):
        # the first at once (or `batch_window` seconds later), then all that arrived during each
        # round trip in the next one, so the step never waits on Redis per delta; any other event
        # sends what waits first, in order (one lock orders the sends).
        self.batch_window = batch_window
        self._send_lock = threading.Lock()
        self._list_lock = threading.Lock()  # held only to append or swap (OS threads, no gevent)
        self._sender_due = False
        #: What ended the sender thread (a stale owner, Redis gone): raised by the next publish,
        #: in the step, where it can be handled; a thread has no caller to raise it to.
        self._sender_failed: Exception | None = None
        # Publish only while `epoch` owns the instance (SPEC §6): a stale owner gets StaleEpoch.
        self.epoch = epoch
        self._xadd_fenced = script(client, _XADD_FENCED) if epoch is not None else None
        #: The run's record is ended (and its instance touched) by this publisher's finish script.
        self.ended = False
        #: The VFS journal the terminal script ships with the run's end (None: no journal).
        self.journal: VfsJournal | None = None

    def _payload(self, event: dict[str, Any], seq: int) -> str:
        payload = {**event, "seq": seq, "runId": self.run_id}
        if event.get("type") in _PLAIN_EVENTS:
            try:  # text and numbers only: orjson's JSON is json's value, ≈ 4x faster
                return redact(orjson.dumps(payload).decode())
            except TypeError:
                pass
        return redact(json.dumps(payload, separators=(",", ":"), default=str))

    def _send_waiting(self, extra: tuple[int, str] | None = None) -> None:
        """XADD the waiting deltas (and `extra`) in one round trip; call with the send lock held."""
        with self._list_lock:
            batch, self._pending = self._pending, []
        if extra is not None:
            batch.append(extra)
        if not batch:
            return
        if self._xadd_fenced is not None:
            args: list[Any] = [self.epoch, self.retention + RUNNING_TTL, self.max_events]
            for seq, payload in batch:
                args += [f"0-{seq}", payload]
            _fenced(self._xadd_fenced, [self.key, keys.instance_record(self.instance_id)], args)
            return
        pipe = self.r.pipeline(transaction=False)
        for seq, payload in batch:
            pipe.xadd(self.key, {"e": payload}, id=f"0-{seq}", maxlen=self.max_events, approximate=False)
        if batch[0][0] == 1:
            pipe.expire(self.key, self.retention + RUNNING_TTL)  # see _XADD_FENCED
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError) and not _added_before(result):
                raise result

    def _sender(self) -> None:
        """Send what waits, then whatever arrived while that round trip was in flight, until
        nothing waits (the first delta goes out at once; the ones behind it ride together)."""
        if self.batch_window:
            time.sleep(self.batch_window)
        while True:
            try:
                with self._send_lock:
                    self._send_waiting()
            except Exception as exc:  # handed to the step (see _sender_failed)
                with self._list_lock:
                    self._sender_failed, self._sender_due = exc, False
                return
            with self._list_lock:
                if not self._pending:
                    self._sender_due = False
                    return

    def _finish(
        self,
        event: dict[str, Any],
        steering_key: str | None,
        seen: int = 0,
        progress: str = "",
        give_back: Sequence[str] = (),
    ) -> list[str]:
        """Append the buffered events and the terminal `event` and end the run record, in one
        atomic script (a web process blocked in XREAD wakes once, after the last entry) —
        unless `steering_key` holds messages: then those are taken and returned instead, and
        `progress` (the run's steps and tokens so far) is recorded on the run. `give_back`:
        steering entries that go back to the instance if this ends the run."""
        with self._send_lock:
            return self._finish_locked(event, steering_key, seen, progress, give_back)

    def _finish_locked(
        self, event: dict[str, Any], steering_key: str | None, seen: int, progress: str, give_back: Sequence[str]
    ) -> list[str]:
        seq = self.seq + 1
        usage = event.get("usage") or {}
        delivery = CURRENT_DELIVERY.get()
        if delivery is not None and (delivery.settled or delivery.run_id != self.run_id):
            delivery = None
        args: list[Any] = [
            self.retention,
            repr(redis_now(self.r)),  # finishedAt and lastActive (regina/clock.py)
            final_status(event),
            event.get("finishReason") or ("error" if event.get("type") == "error" else ""),
            int(usage.get("promptTokens", 0)),
            int(usage.get("completionTokens", 0)),
            str(event.get("error", "")) if event.get("type") == "error" else "",
            self.run_id,
            "" if self.epoch is None else str(self.epoch),
            str(seen) if steering_key else "",
            delivery.tag if delivery is not None else "",
            progress,
        ]
        seq_shipped, entries = self.journal.ship() if self.journal is not None else (0, [])
        args += [seq_shipped, len(entries), *entries, len(give_back), *give_back, self.max_events]
        for pending_seq, pending in [*self._pending, (seq, self._payload(event, seq))]:
            args += [f"0-{pending_seq}", pending]
        run_keys = [
            self.key,
            keys.run_record(self.run_id),
            keys.instance_record(self.instance_id),
            keys.instance_runs(self.instance_id),
            keys.journal(self.instance_id),
            keys.RUNS_OPEN,
        ]
        if steering_key or give_back:
            run_keys += [steering_key or keys.steering(self.instance_id), keys.run_steered(self.run_id)]
        if delivery is not None:
            run_keys += [delivery.index_key, delivery.hash_key, delivery.queue_key]
        try:
            steered = cast(list[str], _fenced(self._finish_script, run_keys, args))
        except redis.RedisError:
            if self.journal is not None:
                self.journal.give_back(entries)  # shipped with the next flush
            raise
        if not steered:
            self.seq = seq
            self._pending.clear()
            self.ended = True
            if delivery is not None:
                delivery.settled = True
        return steered

    def write_pending(self, progress: str = "") -> None:
        """Write out the buffered events before the run's end, in one fenced script with the VFS
        journal's pending entries and `progress` (the run's
        `RunProgress.encode()`, '' = none) recorded on the run (see `_WRITE_PENDING`): what a
        journal flush writes, and the events. Followers of a buffered run (a sync chat answered
        202, `GET /runs/<id>/events`) see every step that ended, not nothing until the run's end.
        StaleEpoch when the instance moved on (nothing written); on another Redis error the
        events and entries are kept for the next write."""
        if self.epoch is None:
            raise ValueError("write_pending is fenced: the publisher needs the owner's epoch")
        journal = self.journal
        with self._send_lock:
            batch, self._pending = self._pending, []
            seq_shipped, entries = journal.ship() if journal is not None else (0, [])
            if not batch and not entries and not progress:
                return
            args: list[Any] = [
                self.epoch,
                self.retention + RUNNING_TTL,
                self.max_events,
                seq_shipped,
                progress,
                len(entries),
                *entries,
            ]
            for seq, payload in batch:
                args += [f"0-{seq}", payload]
            run_keys = [
                self.key,
                keys.instance_record(self.instance_id),
                keys.run_record(self.run_id),
                keys.journal(self.instance_id),
            ]
            try:
                _fenced(script(self.r, _WRITE_PENDING), run_keys, args)
            except redis.RedisError:  # not StaleEpoch: a stale owner's writes are dropped
                self._pending[:0] = batch
                if journal is not None:
                    journal.give_back(entries)
                raise

    def take_unwritten(self) -> list[tuple[int, str]]:
        """The events published and not written yet, as (seq, JSON), taken: the run's failed end
        writes them before its error (`adopt`). A send in flight ends first; a later one finds
        nothing left to send."""
        with self._send_lock, self._list_lock:
            taken, self._pending = self._pending, []
        return taken

    def adopt(self, events: Sequence[tuple[int, str]]) -> None:
        """Write `events` (`take_unwritten` of the run's step that failed) with the next terminal
        event, before it: a buffered run's followers see what its step did, not its error alone.
        Those at or below the stream's last seq are in it already (a write whose reply was lost);
        none after a gap (a batch a failed send dropped), so that the seqs stay 1, 2, 3…"""
        for seq, payload in events:
            if seq <= self.seq:
                continue
            if seq != self.seq + 1:
                break
            self._pending.append((seq, payload))
            self.seq = seq

    def finish_unless_steered(
        self, event: dict[str, Any], steering_key: str, seen: int, progress: str = ""
    ) -> list[str]:
        """Publish the terminal `event` unless steering messages wait in `steering_key`.

        One round trip instead of a steering drain and then the publish: if messages wait, they
        are taken (oldest first) and returned, and nothing is published (the loop goes on with
        them); otherwise the run ends as with `publish`. `seen`: how many entries of the run's
        steering journal the step has had (see `_FINISH`); `progress`: the run's
        `RunProgress.encode()`, recorded when steering is taken (the loop goes on).
        """
        return self._finish(event, steering_key, seen, progress)

    def publish(self, event: dict[str, Any], give_back: Sequence[str] = (), hold: bool = False) -> int:
        """Append an event, stamped with `seq` and `runId`; returns its seq. `give_back` (a
        terminal event's): encoded steering entries the run took and never saved to its
        transcript; they go back to the head of the instance's steering list, for its next run,
        in the script that ends the run — not when the run had ended already (its end reported
        twice, its instance deleted): given back once. `hold`: a streamed run's event waits, as a
        buffered run's do, for the caller's `write_pending` (behind the deltas still waiting)."""
        if self._sender_failed is not None:
            raise self._sender_failed
        if event.get("type") in TERMINAL:
            self._finish(event, None, give_back=give_back)
            return self.seq
        self.seq += 1
        payload = self._payload(event, self.seq)
        if self.buffered:
            self._pending.append((self.seq, payload))
        elif hold:
            with self._list_lock:
                self._pending.append((self.seq, payload))
        elif self.batch_window is not None and event.get("type") == "text-delta":
            with self._list_lock:
                self._pending.append((self.seq, payload))
                start, self._sender_due = not self._sender_due, True
            if start:
                threading.Thread(target=self._sender, daemon=True).start()
                time.sleep(0)  # let the sender put this delta on the wire before we parse on
        else:
            with self._send_lock:
                self._send_waiting((self.seq, payload))
        return self.seq


def _added_before(error: redis.ResponseError) -> bool:
    """An XADD refused because its entry is in the stream already: the same batch sent again
    after its reply was lost (redis-py sends a command once more on a dropped connection)."""
    return "equal or smaller" in str(error)


def _fenced(script: Any, script_keys: list[str], args: list[Any]) -> Any:
    """Run a fenced script; StaleEpoch when it refused to write for a stale owner."""
    try:
        return script(keys=script_keys, args=args)
    except redis.ResponseError as exc:
        if str(exc).startswith("STALE"):
            raise StaleEpoch(f"run events of {script_keys[0]}: the instance moved to another owner") from exc
        raise


def last_seq(client: redis.Redis, run_id: str) -> int:
    """The seq of the run's last published event (0 when none)."""
    return seq_of(cast(list[tuple[str, dict[str, str]]], client.xrevrange(keys.run_events(run_id), count=1)))


def seq_of(xrevrange_reply: list[tuple[str, dict[str, str]]]) -> int:
    """Parse the seq out of an XREVRANGE … COUNT 1 reply."""
    return int(xrevrange_reply[0][0].split("-")[1]) if xrevrange_reply else 0


class PendingRead:
    """An `XREAD … BLOCK` of a run's events sent behind another command in the same write, on a
    connection checked out of the client's pool, its reply not read yet (`RunStore.open`'s
    `read_events`: the chat's open and its first wait for events are one round trip). The first
    `read_events` reads it; whoever does not, `discard`s it (the connection is closed: its reply
    may still come)."""

    def __init__(self, client: redis.Redis, conn: Any) -> None:
        self.client: Any = client  # redis-py's connection-level calls are untyped
        self.conn: Any = conn

    def read(self) -> Any:
        """The XREAD's parsed reply; the connection goes back to the pool."""
        conn, self.conn = self.conn, None
        if conn is None:
            raise RuntimeError("the pending XREAD was read or discarded already")
        try:
            return self.client.parse_response(conn, "XREAD")
        except BaseException:
            conn.disconnect()  # the reply may be half read, or still to come
            raise
        finally:
            self.client.connection_pool.release(conn)

    def discard(self) -> None:
        """Drop the read unread (idempotent)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.disconnect()
            self.client.connection_pool.release(conn)

    def __del__(self) -> None:
        # Dropped unread and not discarded (a response never iterated): close its socket at least
        # (not given back to the pool from a finalizer: the pool's lock may be held right here).
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: S110 -- a finalizer has no one to tell
                pass


def read_events(
    client: redis.Redis,
    run_id: str,
    after: int = 0,
    block_ms: int = 1000,
    pending: PendingRead | None = None,
) -> Iterator[dict[str, Any] | None]:
    """Yield the run's events after seq `after`, blocking for new ones; None on each idle timeout.

    The caller stops after a terminal event (finish/error) or when it decides to give up; a
    None lets it check the instance's health between waits. `pending`: the first XREAD (of
    `after`, blocking `block_ms`), already sent.
    """
    for batch in read_event_batches(client, run_id, after, block_ms, pending):
        if batch is None:
            yield None
        else:
            yield from batch


def read_events_after(client: redis.Redis, run_id: str, after: int) -> list[dict[str, Any]]:
    """The run's stored events after seq `after`, without waiting."""
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.run_events(run_id), min=f"0-{after + 1}"))
    return [cast(dict[str, Any], json.loads(fields["e"])) for _entry_id, fields in entries]


def read_event_batches(
    client: redis.Redis,
    run_id: str,
    after: int = 0,
    block_ms: int = 1000,
    pending: PendingRead | None = None,
) -> Iterator[list[dict[str, Any]] | None]:
    """`read_events`, the events of one XREAD reply at a time (a relay writes them at once)."""
    key = keys.run_events(run_id)
    last_id = f"0-{after}"
    while True:
        resp: list[tuple[str, list[tuple[str, dict[str, str]]]]] | None = None
        if pending is not None:
            first, pending = pending, None
            try:
                resp = first.read()
            except (redis.ConnectionError, redis.TimeoutError):
                resp = None  # asked again, with the client's retries
            else:
                if not resp:
                    yield None
                    continue
        if resp is None:
            resp = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                client.xread({key: last_id}, block=block_ms, count=500),
            )
            if not resp:
                yield None
                continue
        entries = resp[0][1]
        last_id = entries[-1][0]
        yield [cast(dict[str, Any], json.loads(fields["e"])) for _entry_id, fields in entries]
