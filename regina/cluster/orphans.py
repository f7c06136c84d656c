"""The periodic orphan sweep (SPEC §6): instances whose member died, found without a request.

An orphan with steps waiting (queued, or taken by the dead worker and never acknowledged) is
re-homed on a live member right away, so those steps run even if no client is waiting on them.
An orphan with nothing waiting is only marked `suspended` (fenced by its epoch): its next
request resumes it from storage, and a worker death does not trigger a storm of restores.
A suspended instance with steps waiting (one queued while it was suspending) is resumed too.

`release_previous_incarnation` handles a worker that restarts under the same member id (a pod
keeping its host name): the records still name it, but the new process holds none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import cast

import redis

from regina import keys
from regina.cluster.membership import live_members
from regina.instances import InstanceStore

log = logging.getLogger("regina.orphans")

Row = tuple[str, str | None, str | None, int]


def _records(client: redis.Redis) -> list[Row]:
    """(instanceId, status, member, epoch) of every instance, in two round trips."""
    ids = cast(list[str], client.zrange(keys.INSTANCES, 0, -1))
    pipe = client.pipeline(transaction=False)
    for iid in ids:
        pipe.hmget(keys.instance_record(iid), "status", "member", "epoch")
    return [(iid, s, m, int(e or 0)) for iid, (s, m, e) in zip(ids, pipe.execute(), strict=True)]


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
    rows = _records(client)
    if not rows:
        return 0, 0
    # A member is alive while its key exists, even when it already left placement (shutting down).
    held = sorted({r[2] for r in rows if r[1] in ("started", "suspending") and r[2]})
    pipe = client.pipeline(transaction=False)
    for mid in held:
        pipe.exists(keys.member(mid))
    alive = {mid for mid, ok in zip(held, pipe.execute(), strict=True) if ok}
    orphans = [r for r in rows if r[1] in ("started", "suspending") and r[2] and r[2] not in alive]
    suspended = [r for r in rows if r[1] == "suspended"]
    candidates = [r[0] for r in orphans + suspended]
    waiting = set(waiting_instances(candidates)) if candidates else set()
    store = InstanceStore(client)
    moved = marked = 0
    for iid, _status, member, epoch in orphans + suspended:
        if iid in waiting:
            try:
                activate(iid)
                moved += 1
                log.warning("instance %s (member %s) had steps waiting: placed on a live member", iid, member)
            except Exception as exc:  # noqa: BLE001 - one instance must not stop the sweep
                log.warning("instance %s could not be placed yet: %s", iid, exc)
        elif _status != "suspended" and store.fenced_set(iid, epoch, status="suspended"):
            marked += 1
    return moved, marked


def release_previous_incarnation(client: redis.Redis, member_id: str, restore_unacked: Callable[[str], int]) -> int:
    """At a worker's start: give back what an earlier process with the same member id held.

    Its delivered-but-unacknowledged steps go back to their queues and its instances are marked
    `suspended`, so the next request (or the sweep, when steps wait) attaches them properly.
    """
    store = InstanceStore(client)
    count = 0
    for iid, status, member, epoch in _records(client):
        if member == member_id and status in ("started", "suspending"):
            restore_unacked(iid)
            if store.fenced_set(iid, epoch, status="suspended"):
                count += 1
    if count:
        log.warning("member %s restarted: %d instance(s) it held were released", member_id, count)
    return count
