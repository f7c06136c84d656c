"""The periodic orphan sweep (SPEC §6): instances whose member died, found without a request.

An orphan with steps waiting (queued, or taken by the dead worker and never acknowledged) is
re-homed on a live member right away, so those steps run even if no client is waiting on them.
An orphan with nothing waiting is only marked `suspended` (fenced by its epoch): its next
request resumes it from storage, and a worker death does not trigger a storm of restores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import redis

from regina import keys
from regina.cluster.membership import live_members
from regina.lifecycle import Coordinator

log = logging.getLogger("regina.orphans")

SWEEP_LOCK = "regina:sweep:orphans"


def sweep_orphans(
    client: redis.Redis, coordinator: Coordinator, has_pending: Callable[[str], bool], every: float
) -> tuple[int, int]:
    """Re-home or suspend orphans; at most one member sweeps per `every` seconds.

    Returns:
        (re-homed, marked suspended)
    """
    if not client.set(SWEEP_LOCK, "1", nx=True, px=max(1, int(every * 1000))):
        return 0, 0
    ids = cast(list[str], client.zrange(keys.INSTANCES, 0, -1))
    if not ids:
        return 0, 0
    alive = set(live_members(client))
    pipe = client.pipeline(transaction=False)
    for iid in ids:
        pipe.hmget(keys.instance_record(iid), "status", "member", "epoch")
    rehomed = suspended = 0
    for iid, (status, member, epoch) in zip(ids, pipe.execute(), strict=True):
        if status not in ("started", "suspending") or not member or member in alive:
            continue
        if has_pending(iid):
            try:
                coordinator.ensure_active(iid)
                rehomed += 1
                log.warning("orphan %s (member %s gone) re-homed: it had steps waiting", iid, member)
            except Exception as exc:  # noqa: BLE001 - one orphan must not stop the sweep
                log.warning("orphan %s could not be re-homed yet: %s", iid, exc)
        elif coordinator.store.fenced_set(iid, int(epoch or 0), status="suspended"):
            suspended += 1
    return rehomed, suspended
