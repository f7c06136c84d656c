"""Members (workers) register, renew and deregister with the seed's keys and TTLs (SPEC §6)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import redis

from regina import keys


class Membership:
    """One member's presence in `regina:members` and its TTL'd address and count keys."""

    def __init__(self, client: redis.Redis, member_id: str, address: str, ttl: float) -> None:
        self.r = client
        self.member_id = member_id
        self.address = address
        self.ttl_ms = max(1, int(ttl * 1000))
        self._differs: tuple[int, int] | None = None  # (held, stored) at the last renewal, if unequal

    def register(self, instance_count: int = 0) -> None:
        """SADD the member and SET its keys with the TTL (it holds no run yet)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(keys.MEMBERS, self.member_id)
        pipe.set(keys.member(self.member_id), self.address, px=self.ttl_ms)
        pipe.set(keys.member_instances(self.member_id), instance_count, px=self.ttl_ms)
        pipe.set(keys.member_runs(self.member_id), "", px=self.ttl_ms)
        pipe.execute()

    def renew(self, instance_count: int, runs: Iterable[str] = ()) -> bool:
        """Refresh the TTLs; re-register if the keys had expired meanwhile. True when the member
        was not in the members set any more: the orphan sweep took it for dead (its key had
        lapsed) and deleted its ready list, whose entries the caller must put back.

        The count is set only when its key is gone: between renewals it moves by increments
        (`InstanceHost._count`), which commute, while an absolute count read here before an attach
        and written after that attach's increment would undo it (least-loaded would then see a
        member one instance emptier than it is). A difference seen twice in a row with nothing
        attached or released in between is a drift (an increment lost to an error): the count held
        then wins.

        `runs`: the ids of the runs whose steps the member holds now, written with the same TTL
        (`keys.member_runs`, what the lost-run sweep trusts)."""
        counter = keys.member_instances(self.member_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(keys.MEMBERS, self.member_id)
        pipe.set(keys.member(self.member_id), self.address, px=self.ttl_ms)
        pipe.set(keys.member_runs(self.member_id), " ".join(runs), px=self.ttl_ms)
        pipe.set(counter, instance_count, px=self.ttl_ms, nx=True)
        pipe.pexpire(counter, self.ttl_ms)
        pipe.get(counter)
        replies = pipe.execute()
        stored = int(replies[-1] or 0)
        seen = (instance_count, stored) if stored != instance_count else None
        if seen is not None and seen == self._differs:
            self.r.set(counter, instance_count, px=self.ttl_ms)
            seen = None
        self._differs = seen
        return bool(replies[0])

    def renew_leaving(self, runs: Iterable[str] = ()) -> None:
        """Keep the member alive while it leaves (a warm shutdown finishing its steps and backups),
        out of placement: its keys' TTLs are refreshed (its runs as in `renew`), and it is taken
        out of the members set again (a renewal in flight when it left could have put it back)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(keys.MEMBERS, self.member_id)
        pipe.set(keys.member(self.member_id), self.address, px=self.ttl_ms)
        pipe.set(keys.member_runs(self.member_id), " ".join(runs), px=self.ttl_ms)
        pipe.pexpire(keys.member_instances(self.member_id), self.ttl_ms)
        pipe.execute()

    def leave_placement(self) -> None:
        """Stop being chosen for new instances (shutdown begins) while still owning ours."""
        self.r.srem(keys.MEMBERS, self.member_id)

    def deregister(self) -> None:
        """Remove the member's keys at shutdown."""
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(keys.MEMBERS, self.member_id)
        pipe.delete(
            keys.member(self.member_id),
            keys.member_instances(self.member_id),
            keys.member_ready(self.member_id),
            keys.member_runs(self.member_id),
        )
        pipe.execute()


# KEYS: the members set. ARGV: address-key prefix, count-key suffix. Returns [id, alive, count, …]
# (one round trip, where SMEMBERS and then a pipeline over the ids took two: every spawn places).
_MEMBERS_AND_COUNTS = """
local out = {}
for _, mid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = mid
  out[#out + 1] = redis.call('EXISTS', ARGV[1] .. mid)
  out[#out + 1] = redis.call('GET', ARGV[1] .. mid .. ARGV[2]) or '0'
end
return out
"""


# _MEMBERS_AND_COUNTS, then INCR of KEYS[2] (the round-robin counter) as the last element.
_MEMBERS_AND_COUNTER = _MEMBERS_AND_COUNTS.replace(
    "return out", "out[#out + 1] = redis.call('INCR', KEYS[2])\nreturn out"
)


def live_members(client: redis.Redis, prune: bool = False) -> dict[str, int]:
    """Members whose address key has not expired, with their instance counts. Only the orphan
    sweep prunes dead ids (`prune`): a read such as /healthz changes nothing."""
    prefix = keys.member("")
    suffix = keys.member_instances("").removeprefix(prefix)
    flat = cast(list[Any], client.eval(_MEMBERS_AND_COUNTS, 1, keys.MEMBERS, prefix, suffix))
    return _alive(client, flat, prune)


def live_members_and_turn(client: redis.Redis) -> tuple[dict[str, int], int]:
    """`live_members()` and the next value of the round-robin counter, in one round trip."""
    prefix = keys.member("")
    suffix = keys.member_instances("").removeprefix(prefix)
    # A Script (EVALSHA) on this path, which every spawn takes: EVAL sends the script's text.
    script = client.register_script(_MEMBERS_AND_COUNTER)
    flat = cast(list[Any], script(keys=[keys.MEMBERS, keys.PLACEMENT_RR], args=[prefix, suffix]))
    return _alive(client, flat[:-1], False), int(flat[-1])


def _alive(client: redis.Redis, flat: list[Any], prune: bool) -> dict[str, int]:
    alive: dict[str, int] = {}
    dead: list[str] = []
    for mid, exists, count in sorted(zip(flat[0::3], flat[1::3], flat[2::3], strict=True)):
        if int(exists):
            alive[str(mid)] = int(count or 0)
        else:
            dead.append(str(mid))
    if dead and prune:
        # A dead member's ready list names queues its instances' next owners read anyway.
        client.eval(_PRUNE, 1, keys.MEMBERS, keys.member(""), keys.member_ready(""), *dead)
    return alive


# KEYS: the members set. ARGV: address-key prefix, ready-list prefix, ids found dead. Each id is
# looked at again in the script: one that renewed since it was read stays (it would have been
# left out of placement, its ready list gone, until its next renewal).
_PRUNE = """
for i = 3, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[i])
    redis.call('DEL', ARGV[2] .. ARGV[i])
  end
end
return 1
"""


def held_runs(client: redis.Redis, member_ids: Iterable[str]) -> tuple[set[str], set[str]]:
    """(the members of `member_ids` alive now, the ids of the runs those members said at their
    last renewal they hold), in one round trip. A member is alive while its address key exists
    (a leaving member too, out of placement); its runs key lives as long."""
    ids = sorted(set(member_ids))
    if not ids:
        return set(), set()
    values = cast(list[str | None], client.mget([keys.member(m) for m in ids] + [keys.member_runs(m) for m in ids]))
    alive = {m for m, address in zip(ids, values[: len(ids)], strict=True) if address is not None}
    runs = {run for held in values[len(ids) :] if held for run in held.split()}
    return alive, runs


def is_alive(client: redis.Redis, member_id: str) -> bool:
    """True while the member's address key exists."""
    return bool(member_id) and bool(client.exists(keys.member(member_id)))
