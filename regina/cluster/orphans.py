"""The periodic orphan sweep (SPEC §6): instances whose member died, found without a request.

An orphan with steps waiting (queued, or taken by the dead worker and never acknowledged) is
re-homed on a live member right away, so those steps run even if no client is waiting on them.
An orphan with nothing waiting is only marked `suspended` (fenced by its epoch): its next
request resumes it from storage, and a worker death does not trigger a storm of restores.
A suspended instance with a step stranded on its queue (one queued while it was suspending) is
resumed too; it stays named while it has open runs, as a lost owner's step (unacknowledged on a
connection RabbitMQ has not closed yet) may be requeued after the sweep that suspended it.

A sweep costs what changed, not what exists: it reads the members that may hold instances
(`regina:holders`), the held sets (`regina:held:<member>`) of the dead ones only, and the queues
named in `regina:stranded` (an instance marked suspended while it had unfinished runs). The
instance scripts keep both (regina/instances.py).

`release_previous_incarnation` handles a worker that restarts under the same member id (a pod
keeping its host name): the records still name it, but the new process holds none of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import cast

import redis

from regina import keys
from regina.cluster.membership import live_members
from regina.instances import InstanceStore

log = logging.getLogger("regina.orphans")

Row = tuple[str, str | None, str | None, int]
HOLDING = ("started", "suspending")

# KEYS: held set, member key, holders set. ARGV: member id, instance record prefix. Drops the
# held set's entries whose record no longer names the member as holding it (none should exist:
# every change is scripted; this keeps a stray one from pinning the member), then forgets a dead
# member that holds nothing (atomic: a claim onto it in between would otherwise be missed).
_FORGET = """
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local rec = redis.call('HMGET', ARGV[2] .. id, 'member', 'status')
  if rec[1] ~= ARGV[1] or (rec[2] ~= 'started' and rec[2] ~= 'suspending') then
    redis.call('ZREM', KEYS[1], id)
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""


def _rows(client: redis.Redis, ids: Iterable[str]) -> list[Row]:
    """(instanceId, status, member, epoch) of the given instances that still exist."""
    ids = list(ids)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for iid in ids:
        pipe.hmget(keys.instance_record(iid), "status", "member", "epoch")
    rows = [(iid, s, m, int(e or 0)) for iid, (s, m, e) in zip(ids, pipe.execute(), strict=True)]
    return [r for r in rows if r[1] is not None]


def _held(client: redis.Redis, member_ids: list[str]) -> list[str]:
    """Ids of the instances the given members hold, per their held sets."""
    if not member_ids:
        return []
    pipe = client.pipeline(transaction=False)
    for mid in member_ids:
        pipe.zrange(keys.member_held(mid), 0, -1)
    return [iid for held in pipe.execute() for iid in held]


def _dead_holders(client: redis.Redis) -> list[str]:
    """Members that may hold instances and whose address key is gone."""
    holders = sorted(cast(set[str], client.smembers(keys.HOLDERS)))
    if not holders:
        return []
    pipe = client.pipeline(transaction=False)
    for mid in holders:
        pipe.exists(keys.member(mid))
    return [mid for mid, ok in zip(holders, pipe.execute(), strict=True) if not ok]


def _with_open_runs(client: redis.Redis, instance_ids: list[str]) -> set[str]:
    """Those of `instance_ids` with queued or running runs (their step may still come back)."""
    if not instance_ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.zcard(keys.instance_runs(iid))
    return {iid for iid, n in zip(instance_ids, pipe.execute(), strict=True) if n}


def _stranded(client: redis.Redis) -> list[str]:
    """Instance ids named in the stranded set."""
    prefix = keys.instance_queue("")
    names = cast(set[str], client.smembers(keys.STRANDED))
    return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


def sweep_orphans(
    client: redis.Redis,
    activate: Callable[[str], object],
    waiting_instances: Callable[[list[str]], Iterable[str]],
    every: float,
) -> tuple[int, int]:
    """Re-home orphans (and suspended instances) with steps waiting; suspend idle orphans.

    `activate(instance_id)` places an instance on a live member (the Coordinator's
    `ensure_active`; passed in so the cluster layer does not reach up to the coordinator);
    `waiting_instances(ids)` names those with steps waiting on the broker, queued or taken by a
    worker and not acknowledged (the Dispatcher's, whichever broker it uses). At most one member
    sweeps per `every` seconds (a Redis lock).

    Returns:
        (re-homed or resumed, marked suspended)
    """
    if not client.set(keys.SWEEP_ORPHANS_LOCK, "1", nx=True, px=max(1, int(every * 1000))):
        return 0, 0
    live_members(client, prune=True)  # the one place dead member ids are pruned
    dead = _dead_holders(client)
    dead_set = set(dead)
    # A member is alive while its key exists, even when it already left placement (shutting down).
    orphans = [r for r in _rows(client, _held(client, dead)) if r[1] in HOLDING and r[2] in dead_set]
    stranded = _stranded(client)
    stranded_rows = _rows(client, stranded)
    suspended = [r for r in stranded_rows if r[1] == "suspended"]
    candidates = [r[0] for r in orphans + suspended]
    waiting = set(waiting_instances(candidates)) if candidates else set()
    store = InstanceStore(client)
    moved = marked = 0
    failed: set[str] = set()
    for iid, status, member, epoch in orphans + suspended:
        if iid in waiting:
            try:
                activate(iid)
                moved += 1
                log.warning("instance %s (member %s) had steps waiting: placed on a live member", iid, member)
            except Exception as exc:  # noqa: BLE001 - one instance must not stop the sweep
                failed.add(iid)
                log.warning("instance %s could not be placed yet: %s", iid, exc)
        elif status != "suspended" and store.fenced_set(iid, epoch, status="suspended"):
            marked += 1
    # A stranded queue stays named while its placement failed, its owner is still suspending, or
    # it has open runs: a lost owner's step is unacknowledged on a connection RabbitMQ closes only
    # after its heartbeats, so no broker sees it waiting yet; a later sweep resumes it then.
    idle = [r[0] for r in suspended if r[0] not in waiting]
    keep = failed | {r[0] for r in stranded_rows if r[1] == "suspending"} | _with_open_runs(client, idle)
    done = [keys.instance_queue(iid) for iid in stranded if iid not in keep]
    if done:
        client.srem(keys.STRANDED, *done)
    forget = client.register_script(_FORGET)
    for mid in dead:
        forget(keys=[keys.member_held(mid), keys.member(mid), keys.HOLDERS], args=[mid, keys.instance_record("")])
    return moved, marked


def build_indexes(client: redis.Redis, unacked_key: str = "unacked") -> bool:
    """Once per cluster (the first worker of this version to start): index the instances and
    unacknowledged steps written before the indexes existed. O(instances) once; every later
    change keeps them in its own script. False when they were built already."""
    if client.exists(keys.INDEXES_BUILT):  # set once built: a build cut short is made again
        return False
    ids = cast(list[str], client.zrange(keys.INSTANCES, 0, -1))
    for lo in range(0, len(ids), 1000):
        batch = ids[lo : lo + 1000]
        pipe = client.pipeline(transaction=False)
        for iid in batch:
            pipe.hmget(keys.instance_record(iid), "member", "status", "createdAt")
        write = client.pipeline(transaction=False)
        for iid, (member, status, created) in zip(batch, pipe.execute(), strict=True):
            if member and status in HOLDING:
                write.zadd(keys.member_held(member), {iid: float(created or 0)})
                write.sadd(keys.HOLDERS, member)
        write.execute()
    prefix = keys.instance_queue("")
    write = client.pipeline(transaction=False)
    for tag, raw in cast(dict[str, str], client.hgetall(unacked_key)).items():
        try:
            queue = json.loads(raw)[2]  # [message, exchange, routing key]
        except (ValueError, TypeError, IndexError):
            continue
        if isinstance(queue, str) and queue.startswith(prefix):
            write.sadd(keys.unacked_of(queue), tag)
    write.execute()
    client.set(keys.INDEXES_BUILT, "1")  # building twice (two first workers at once) is harmless
    log.warning("indexes built for %d instance records (first start of this version)", len(ids))
    return True


def release_previous_incarnation(client: redis.Redis, member_id: str, restore_unacked: Callable[[str], int]) -> int:
    """At a worker's start: give back what an earlier process with the same member id held.

    Its delivered-but-unacknowledged steps go back to their queues and its instances are marked
    `suspended`, so the next request (or the sweep, when steps wait) attaches them properly.
    """
    store = InstanceStore(client)
    count = 0
    for iid, status, member, epoch in _rows(client, store.held(member_id)):
        if member == member_id and status in HOLDING:
            restore_unacked(iid)
            if store.fenced_set(iid, epoch, status="suspended"):  # with runs waiting: stranded
                count += 1
    if count:
        log.warning("member %s restarted: %d instance(s) it held were released", member_id, count)
    return count
