"""What a member writes about the instances it holds: its instance counter, the last write of an
attach, and the answers to the coordinators waiting on its commands."""

from __future__ import annotations

import json
from typing import Any

import redis

from regina import keys
from regina.instances import LUA_FENCED, LUA_NOW

# KEYS: member instance counter. ARGV: delta, count held now, TTL ms.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""

# The end of an attach in one round trip: the fenced touch (status started, lastActive), the
# member's counter +1 (as _COUNT) and the answer to the coordinator waiting on its reply list.
# KEYS: record, member instance counter, reply list. ARGV: epoch, 'status', 'started', count held
# now, counter TTL ms, the answer ('' = none), its TTL in seconds. 0, writing nothing, when the epoch moved on.
_ATTACHED = (
    LUA_FENCED
    + LUA_NOW
    + """
redis.call('HSET', KEYS[1], 'lastActive', now)
set_pairs(3)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], 1)
else redis.call('SET', KEYS[2], ARGV[4]) end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if ARGV[6] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return 1
"""
)

#: Seconds an answer nobody took stays on its reply list.
REPLY_TTL = 60


def answer_json(ok: bool, data: Any = None, error: str | None = None) -> str:
    """A command's answer as the coordinator reads it (regina/lifecycle.py, `Coordinator.command`)."""
    return json.dumps({"ok": True, "data": data} if ok else {"ok": False, "error": error}, default=str)


def answer(client: redis.Redis, token: str | None, data: Any = None, error: str | None = None) -> None:
    """Answer a command on its reply list (`error`: it failed); no token, no answer."""
    if not token:
        return
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.reply(token), answer_json(error is None, data, error))
    pipe.expire(keys.reply(token), REPLY_TTL)
    pipe.execute()


class MemberWrites:
    """The member's instance counter (its TTL kept with the member's) and an attach's last write."""

    def __init__(self, client: redis.Redis, member_id: str, member_ttl: float) -> None:
        self.member_id = member_id
        self.ttl_ms = max(1, int(member_ttl * 1000))
        self._count = client.register_script(_COUNT)
        self._attached = client.register_script(_ATTACHED)

    def count(self, delta: int, held: int) -> None:
        """Change the counter by `delta`; a counter that expired between two renewals is set to
        `held`, the count held now (an INCR would start it from 0)."""
        self._count(keys=[keys.member_instances(self.member_id)], args=[delta, held, self.ttl_ms])

    def attached(self, instance_id: str, epoch: int, held: int, reply_to: str | None, data: dict[str, Any]) -> bool:
        """An attach at `epoch` is done: status started, lastActive now, the counter +1 (`held`
        if it expired) and, with `reply_to`, the answer `data` — in one round trip. False, with
        nothing written, when the instance's epoch moved on."""
        record, counter = keys.instance_record(instance_id), keys.member_instances(self.member_id)
        reply = answer_json(True, data) if reply_to else ""
        args: list[str | int] = [epoch, "status", "started", held, self.ttl_ms, reply, REPLY_TTL]
        return bool(self._attached(keys=[record, counter, keys.reply(reply_to or "")], args=args))
