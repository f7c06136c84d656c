"""Instances claimed for a member whose attach never reached it.

On Redis the claim (or a spawn's create) pushes the attach command in the same script, so a
claimed instance always has its attach on its way. On RabbitMQ the coordinator publishes the
attach after the claim: a coordinator that dies in between (or whose publish fails, or a RabbitMQ
restart that drops the transient command) leaves the instance `started` on a live member that
never heard of it, and every chat queues a step nobody consumes. The member finds such claims in
its own held index (`keys.member_held`) and sends itself the attach the coordinator would have.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

import redis

from regina import keys


@dataclass(frozen=True)
class Unattached:
    """A claim of this member's with no attach seen: what its attach command needs."""

    instance_id: str
    epoch: int
    definition_id: str

    @property
    def never_attached(self) -> bool:
        """Epoch 1: still the spawn's claim (every later claim bumps the epoch), so its queue may
        not exist yet and the attach must be a spawn's."""
        return self.epoch == 1


class UnattachedClaims:
    """Claims of one member that stay unattached across two checks.

    One check alone cannot tell a lost attach from one on its way (the coordinator publishes it
    right after the claim, and it may wait behind other commands): a claim is due only when the
    previous check saw it unattached at the same epoch. An attach sent for one that was on its way
    after all is harmless: the second attach of an epoch finds it held and answers at once."""

    def __init__(self, client: redis.Redis, member_id: str) -> None:
        self.r = client
        self.member_id = member_id
        self._seen: dict[str, int] = {}

    def due(self, here: Collection[str]) -> list[Unattached]:
        """The claims to attach now. `here`: the instances held (or being attached) by this
        member and current; when the held index counts no more than these, nothing is read."""
        held_key = keys.member_held(self.member_id)
        if int(self.r.zcard(held_key)) <= len(here):
            self._seen = {}
            return []
        missing = [iid for iid in cast(list[str], self.r.zrange(held_key, 0, -1)) if iid not in here]
        pipe = self.r.pipeline(transaction=False)
        for iid in missing:
            pipe.hmget(keys.instance_record(iid), ["status", "member", "epoch", "definitionId"])
        seen: dict[str, int] = {}
        due: list[Unattached] = []
        for iid, (status, member, epoch, definition) in zip(missing, pipe.execute(), strict=True):
            if status != "started" or member != self.member_id or not epoch:
                continue  # suspending (its owner had it), moved, or deleted meanwhile
            if self._seen.get(iid) == int(epoch):
                due.append(Unattached(iid, int(epoch), str(definition or "")))
            else:
                seen[iid] = int(epoch)
        self._seen = seen
        return due
