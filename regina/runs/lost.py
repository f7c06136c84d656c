"""Lost runs: a run `queued` or `running` that nothing will ever run or end is ended `failed`.

A run ends when the step that runs it writes its end (the finish script, regina/runs/stream.py),
when it is cancelled while queued, or when its instance is deleted. Some failures leave it open
with nothing to end it: a step failed and publishing its error failed too (Redis failing twice in
a row: the step was acknowledged, the run stays `running`); the web process was killed between
the chat's open (the run recorded `queued`) and publishing its step (nothing in the queue). Such
a run held its instance busy (`whenBusy: reject` answered 409 naming it, it counted against
`limits.maxQueuedRuns`), its followers waited until their timeout, and an `Idempotency-Key`'s
retries were answered with it, for as long as its record lived (a day).

How it is found (one member per `memberHeartbeat`, from the worker's orphan loop, a Redis lock):

- every run the open script records goes into `regina:runs:open`, scored by its creation time,
  and leaves it in its finish script (inside scripts a chat runs anyway: no round trip more);
- each live member writes, with every heartbeat, the ids of the runs whose steps it holds — taken
  from the queue and not ended, waiting for the pool, for the instance's turn or running
  (`regina:member:<id>:runs`, in the renewal's own MULTI; workers/step_strategy.py keeps them);
- the sweep reads only the entries older than `limits.lostRunAfter` (`ZRANGEBYSCORE … LIMIT`):
  those whose run ended are dropped; a run held by a live member (named in its runs key), or
  whose instance has steps waiting on the broker (queued, or taken and not acknowledged: the
  Dispatcher's `waiting_instances`, as for the orphan sweep), or whose instance's member is dead
  (the orphan sweep re-homes it and its steps run again) is alive: its score becomes now, so a
  long run is looked at again once per `lostRunAfter`, not at every sweep;
- a run found neither held nor waiting is marked (`lostAt`: when, its status and its start) and
  ended only if a sweep at least `memberTtl` later finds it the same — still not held, not
  waiting, not started or moved on since. By then every live member has renewed its runs key at
  least once after the mark, so a step taken in between (a worker's first heartbeat after it
  joined, RabbitMQ's prefetched steps, which no Redis read sees) is seen held, not ended.

The end is one script: the run's `error` event at its next seq (its followers and streams end
with it), status `failed`, `finishReason` `error` and the error in the record, the run out of its
instance's open runs; a run that never started lets go of its Idempotency-Key (the key's retry
does the work, as when the web could not queue the step); the steering messages a running run
took and never applied (`unapplied_steering`: those after its last `steer-applied` receipt) go
back to the head of its instance's steering list, so the instance's next run applies them
(SPEC §12), as a failed run's end gives back what it took. The script writes nothing when the run
ended or moved on meanwhile, so a step that comes back after all finds its run ended and is
dropped (`regina/step.py`), as a redelivered step of an ended run always is.

What is never ended: a long model call or tool on a live worker (held), a run waiting behind
others on its instance (its step queued, or taken and waiting for its turn: held or waiting), a
run whose worker died (its step waits to be redelivered). The bound only guards the moments in
which a run is known to nobody: the web between its open and its publish (placing the instance
first: keep `lostRunAfter` above 2 × (`placementWait` + 2 × `workerReplyTimeout`)), and a step between its
take and the next heartbeat.

Why a sweep and not a check when someone next touches the instance: the runs to end are often
the ones nobody touches again (a follower waits on the run, not on its instance; a poller reads
`GET /runs/<id>`), and the chat's open would have to read the queue and every member's runs to
judge the busy run, on the hot path. The sweep's cost is a ZADD (the open) and a ZREM (the
finish) per chat and, per sweep, reads of the runs still open past the bound (each once then,
and once per bound while it lives), whatever the number of instances.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import cast

import redis

from regina import keys
from regina.clock import redis_now
from regina.cluster.membership import held_runs, live_members
from regina.redis_conn import script
from regina.runs.steering import decode

log = logging.getLogger("regina.runs")

OPEN = frozenset({"queued", "running"})
HOLDING = ("started", "suspending")
#: Runs read per batch; a sweep reads batches until one is not full, at most `MAX_BATCHES`.
BATCH = 500
MAX_BATCHES = 20

# KEYS: run record. ARGV: the mark ("<now> <status> <startedAt>"), status, startedAt ('' none).
# Marks a run lost-looking only while it is still as the sweep read it.
_MARK = """
local rec = redis.call('HMGET', KEYS[1], 'status', 'startedAt')
if rec[1] ~= ARGV[2] or (rec[2] or '') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'lostAt', ARGV[1])
return 1
"""

# KEYS: run record, run events, instance runs, open runs index, instance record, instance
# steering list. ARGV: now, retention, runId, the mark the sweep confirmed, the error event's JSON
# up to its seq, its JSON after the seq (ending in `}`), the error, the status the sweep read, then
# the steering entries to give back. Ends the run `failed` with its error event at the stream's
# next seq, only while it is open, in that status, and marked as the sweep read it; the tokens its
# attempts recorded (`spent`, regina/runs/store.py) are the run's usage, in its event and record,
# and are added to the instance's usage (nothing else ever will); a run that never started lets go
# of its Idempotency-Key (the key's record still naming it); the steering entries go back to the
# head of the instance's steering list, oldest first, while the instance exists (as the finish
# script gives back a failed run's). An ended run only leaves the index. Returns 1 if it ended it.
_END_LOST = """
local rec = redis.call('HMGET', KEYS[1], 'status', 'lostAt', 'keep', 'idem', 'spent')
if rec[1] ~= 'queued' and rec[1] ~= 'running' then
  redis.call('ZREM', KEYS[4], ARGV[3])
  return 0
end
if rec[2] ~= ARGV[4] or rec[1] ~= ARGV[8] then return 0 end
local prompt, completion = 0, 0
if rec[5] then
  local _, p, c = string.match(rec[5], '^(%d+) (%d+) (%d+)$')
  prompt, completion = tonumber(p or '0'), tonumber(c or '0')
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], '%-(%d+)$')) + 1 end
local usage = string.format(',"usage":{"promptTokens":%d,"completionTokens":%d}}', prompt, completion)
redis.call('XADD', KEYS[2], '0-' .. seq, 'e', ARGV[5] .. seq .. string.sub(ARGV[6], 1, -2) .. usage)
redis.call('HSET', KEYS[1], 'status', 'failed', 'finishedAt', ARGV[1], 'finishReason', 'error', 'error', ARGV[7],
  'promptTokens', string.format('%d', prompt), 'completionTokens', string.format('%d', completion))
if (prompt > 0 or completion > 0) and redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HINCRBY', KEYS[5], 'promptTokens', prompt)
  redis.call('HINCRBY', KEYS[5], 'completionTokens', completion)
end
local keep = math.max(tonumber(ARGV[2]), tonumber(rec[3] or '0'))
redis.call('EXPIRE', KEYS[1], keep)
redis.call('EXPIRE', KEYS[2], keep)
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[3])
if rec[1] == 'queued' and rec[4] then
  local claim = redis.call('GET', rec[4])
  local tail = ' ' .. ARGV[3]
  if claim and string.sub(claim, -#tail) == tail then redis.call('DEL', rec[4]) end
end
if #ARGV > 8 and redis.call('EXISTS', KEYS[5]) == 1 then
  for i = #ARGV, 9, -1 do redis.call('LPUSH', KEYS[6], ARGV[i]) end
end
return 1
"""

#: Events read per round trip while looking for a run's last `steer-applied` receipt.
RECEIPT_PAGE = 200


def lost_error(status: str, lost_after: float) -> str:
    """The error a lost run ends with (its event and its record's `error`)."""
    what = "its step was never queued or was lost" if status == "queued" else "its worker stopped without ending it"
    return (
        f"the run was lost: no worker holds it and no step of it is queued ({what}; "
        f"{status} and unheld for more than {lost_after:g}s); nothing was done after that — send it again"
    )


def _mark_of(value: str | None) -> tuple[float, str, str] | None:
    """A `lostAt` mark's (when, status, startedAt); None when absent or unreadable."""
    if not value:
        return None
    parts = value.split(" ")
    try:
        return float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""
    except (ValueError, IndexError):
        return None


def sweep_lost_runs(
    client: redis.Redis,
    waiting_instances: Callable[[list[str]], Iterable[str]],
    every: float,
    lost_after: float,
    member_ttl: float,
    retention: float,
) -> int:
    """End the runs nothing holds any more (see the module docstring); how many it ended.

    `waiting_instances(ids)` names those with steps waiting on the broker (the Dispatcher's, as
    for the orphan sweep). At most one member sweeps per `every` seconds (a Redis lock)."""
    if not client.set(keys.SWEEP_RUNS_LOCK, "1", nx=True, px=max(1, int(every * 1000))):
        return 0
    ended = 0
    for _ in range(MAX_BATCHES):
        now = redis_now(client)
        run_ids = cast(list[str], client.zrangebyscore(keys.RUNS_OPEN, "-inf", now - lost_after, start=0, num=BATCH))
        if not run_ids:
            break
        ended += _sweep_batch(client, run_ids, now, waiting_instances, lost_after, member_ttl, retention)
        if len(run_ids) < BATCH:
            break
    return ended


def _sweep_batch(
    client: redis.Redis,
    run_ids: list[str],
    now: float,
    waiting_instances: Callable[[list[str]], Iterable[str]],
    lost_after: float,
    member_ttl: float,
    retention: float,
) -> int:
    pipe = client.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(keys.run_record(run_id), "status", "instanceId", "startedAt", "lostAt")
    records = cast(list[list[str | None]], pipe.execute())
    open_runs = {
        run_id: rec for run_id, rec in zip(run_ids, records, strict=True) if rec[0] in OPEN and rec[1] is not None
    }
    done = [run_id for run_id in run_ids if run_id not in open_runs]  # ended, or expired
    if done:
        client.zrem(keys.RUNS_OPEN, *done)
    if not open_runs:
        return 0
    held, waiting, orphaned = _alive(
        client, sorted({cast(str, rec[1]) for rec in open_runs.values()}), waiting_instances
    )
    seen_alive: list[str] = []
    unmark: list[str] = []
    confirm_at: dict[str, float] = {}  # marked runs: when their mark may be confirmed
    ended = 0
    for run_id, (status, of, started, lost_at) in open_runs.items():
        if run_id in held or of in waiting or of in orphaned:
            seen_alive.append(run_id)
            if lost_at is not None:
                unmark.append(run_id)
            continue
        status, started = str(status), started or ""
        mark = _mark_of(lost_at)
        if lost_at is None or mark is None or (mark[1], mark[2]) != (status, started):
            script(client, _MARK)(keys=[keys.run_record(run_id)], args=[f"{now!r} {status} {started}", status, started])
            confirm_at[run_id] = now + member_ttl
        elif now - mark[0] >= member_ttl:
            ended += _end(client, run_id, str(of), lost_at, status, lost_after, now, retention)
        else:
            confirm_at[run_id] = mark[0] + member_ttl
    pipe = client.pipeline(transaction=False)
    if seen_alive:
        pipe.zadd(keys.RUNS_OPEN, dict.fromkeys(seen_alive, now), xx=True)
    if confirm_at:  # out of the batches' front until their confirmation is due: the runs behind are read
        pipe.zadd(keys.RUNS_OPEN, {run_id: at - lost_after for run_id, at in confirm_at.items()}, xx=True)
    for run_id in unmark:
        pipe.hdel(keys.run_record(run_id), "lostAt")
    pipe.execute()
    return ended


def _alive(
    client: redis.Redis, instance_ids: list[str], waiting_instances: Callable[[list[str]], Iterable[str]]
) -> tuple[set[str], set[str], set[str]]:
    """(the runs live members hold, the instances with steps waiting on the broker, the instances
    whose member died: the orphan sweep re-homes them and their steps run again)."""
    pipe = client.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hmget(keys.instance_record(iid), "status", "member")
    instances = dict(zip(instance_ids, cast(list[list[str | None]], pipe.execute()), strict=True))
    named = {inst[1] for inst in instances.values() if inst[1]}
    alive, held = held_runs(client, set(live_members(client)) | named)
    orphaned = {iid for iid, (status, member) in instances.items() if status in HOLDING and member not in alive}
    unheld = [iid for iid in instance_ids if iid not in orphaned]
    waiting = set(waiting_instances(unheld)) if unheld else set()
    return held, waiting, orphaned


def _end(
    client: redis.Redis,
    run_id: str,
    instance_id: str,
    mark: str,
    status: str,
    lost_after: float,
    now: float,
    retention: float,
) -> int:
    error = lost_error(status, lost_after)
    head = '{"type":"error","error":' + json.dumps(error) + ',"seq":'
    tail = f',"runId":"{run_id}"}}'
    give_back = unapplied_steering(client, run_id) if status == "running" else []  # a queued run took none
    done = int(
        script(client, _END_LOST)(
            keys=[
                keys.run_record(run_id),
                keys.run_events(run_id),
                keys.instance_runs(instance_id),
                keys.RUNS_OPEN,
                keys.instance_record(instance_id),
                keys.steering(instance_id),
            ],
            args=[repr(now), str(int(retention)), run_id, mark, head, tail, error, status, *give_back],
        )
    )
    if done:
        log.warning(
            "run %s of instance %s ended failed: lost (%s, held by no worker, no step queued)%s",
            run_id,
            instance_id,
            status,
            f"; {len(give_back)} steering message(s) it took go back to its instance" if give_back else "",
        )
    return done


def unapplied_steering(client: redis.Redis, run_id: str) -> list[str]:
    """The entries of the run's steering journal its conversation never got, for its instance's
    next run (SPEC §12: steering survives a worker crash; one that reached no run is applied at
    the next run's first step boundary).

    A run applies what it takes in the order it took it, and publishes a `steer-applied` receipt
    once a message is in its conversation (its transcript shipped first, or with the receipt): the
    entries after the one of its last receipt never got there; all of them when it has none. The
    sweep has no transcript to look at, so an entry a step saved and then failed to write the
    receipt of (Redis failing in that very write) goes back too: applied twice rather than lost,
    as `InstanceHost.end_failed` gives all back when the transcript is not at hand."""
    taken = cast(list[str], client.lrange(keys.run_steered(run_id), 0, -1))
    if not taken:
        return []
    last = _last_receipt(client, run_id)
    ids = [decode(entry).steer_id for entry in taken]
    if last is None or last not in ids:
        return taken
    return taken[len(ids) - ids[::-1].index(last) :]


def _last_receipt(client: redis.Redis, run_id: str) -> str | None:
    """The steerId of the run's last `steer-applied` event (None: none), read from the end."""
    key, upper = keys.run_events(run_id), "+"
    while True:
        page = cast(list[tuple[str, dict[str, str]]], client.xrevrange(key, max=upper, min="-", count=RECEIPT_PAGE))
        for _entry_id, fields in page:
            if '"steer-applied"' in fields["e"]:
                event = json.loads(fields["e"])
                if event.get("type") == "steer-applied":
                    return str(event.get("steerId", ""))
        if len(page) < RECEIPT_PAGE:
            return None
        upper = "(" + page[-1][0]
