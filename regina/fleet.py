"""The fleet view (SPEC §12): every instance, filtered and paginated, fast at 100 000 instances.

Pages walk the `createdAt`-scored set of instance ids (`keys.INSTANCES`, or one definition's
set) from an opaque cursor — the last (score, id) served — so a page costs O(log n + page) in
Redis however deep it is, and instances created or deleted meanwhile never shift later pages.
A page goes on from the cursor's entry by its rank, so any number of instances may share one
createdAt (if that entry was deleted, a binary search of the tie finds the place: O(log tie)).
Filters on `status` and `member` are applied to the records read; a page scans at most
`SCAN_LIMIT` ids, so a rare filter can return a short (even empty) page with a cursor to go on.

`member` is the live member that holds the instance, else null: a suspended instance is held by
none (its record keeps the last holder, for nothing), and one whose member died (an orphan) is
held by none until the next request for it or the orphan sweep moves it; it stays `started`,
as SPEC §3 knows no other state, and is served as such. So each batch read checks the distinct
members on it with one pipelined EXISTS of their member keys. The `member` filter matches only
the instances that member holds while it lives: a dead member's is an empty page at once, a
live one's walks its held set (`keys.member_held`, also scored by createdAt), so its pages cost
O(page) however few of the fleet's instances it runs.
"""

from __future__ import annotations

import base64
import math
from typing import Any, cast

import redis

from regina import keys
from regina.errors import BadRequest
from regina.instances import InstanceRecord
from regina.usage import read_page_with_usage

MAX_LIMIT = 1000
SCAN_LIMIT = 5000

# The ARGV[3] entries after ARGV[2] in the sorted set KEYS[1], as [id, score, …], when ARGV[2]
# is still in it at score ARGV[1] (its rank is where the rest of a tie starts); false when not.
_AFTER = """
local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
if not rank or tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2])) ~= tonumber(ARGV[1]) then return false end
return redis.call('ZRANGE', KEYS[1], rank + 1, rank + tonumber(ARGV[3]), 'WITHSCORES')
"""


def encode_cursor(score: float, instance_id: str) -> str:
    """An opaque cursor for "after this instance"."""
    return base64.urlsafe_b64encode(f"{score!r}|{instance_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(score, instance id) of a cursor, or a 400 naming the parameter."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, instance_id = raw.split("|", 1)
        if not math.isfinite(float(score)):
            raise ValueError(score)
        return float(score), instance_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("query parameter 'cursor' is not a cursor this API returned") from None


class Fleet:
    """Reads pages of instance records with their usage and running run."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._after_script = client.register_script(_AFTER)

    def page(
        self,
        agent: str | None = None,
        status: str | None = None,
        member: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the fleet and the cursor of the next (None at the end)."""
        key = keys.definition_instances(agent) if agent else keys.INSTANCES
        after_score, after_id = decode_cursor(cursor) if cursor else (float("-inf"), "")
        alive: dict[str, bool] = {}  # liveness of the members seen on this page
        if member is not None:
            if status == "suspended" or not self._check_alive([member], alive):
                return [], None  # a suspended instance, or a dead member's, is held by no one
            key = keys.member_held(member)  # what a live member holds: its held set, not a scan
        out: list[dict[str, Any]] = []
        scanned = 0
        num = limit + 50
        while len(out) < limit and scanned < SCAN_LIMIT:
            batch = self._after(key, after_score, after_id, num) if cursor or scanned else self._range(key, 0, num)
            if not batch:
                return out, None
            scanned += len(batch)
            for item in self._records([i for i, _ in batch], alive):
                if (
                    (status is None or item["status"] == status)
                    and (member is None or item["member"] == member)
                    and (agent is None or item["definitionId"] == agent)
                ):
                    out.append(item)
                    if len(out) == limit:
                        last = next(s for i, s in batch if i == item["instanceId"])
                        return out, encode_cursor(last, item["instanceId"])
            if len(batch) < num:
                return out, None
            after_id, after_score = batch[-1]
        return out, encode_cursor(after_score, after_id)

    def _range(self, key: str, start: int, num: int) -> list[tuple[str, float]]:
        """`num` entries of `key` from index `start`, with their scores."""
        return cast(list[tuple[str, float]], self.r.zrange(key, start, start + num - 1, withscores=True))

    def _after(self, key: str, score: float, instance_id: str, num: int) -> list[tuple[str, float]]:
        """The `num` entries of `key` after (score, instance_id), with their scores.

        Entries of one score are in id order, and many may share one (a coarse clock, a restore):
        the place is found by the cursor's own entry (one script), or when that one is gone, by a
        binary search of its score's entries. Reading from the score's start would skip all but
        the first `num` entries of a tie."""
        flat = cast(list[str] | None, self._after_script(keys=[key], args=[repr(score), instance_id, num]))
        if flat:
            return [(flat[n], float(flat[n + 1])) for n in range(0, len(flat), 2)]
        if flat is not None:
            return []  # the entry is there and is the last
        pipe = self.r.pipeline(transaction=False)
        pipe.zcount(key, "-inf", f"({score!r}")
        pipe.zcount(key, score, score)
        lo, tied = cast(list[int], pipe.execute())
        hi = lo + tied
        while lo < hi:  # the first entry of the tie whose id is after instance_id
            mid = (lo + hi) // 2
            at = cast(list[str], self.r.zrange(key, mid, mid))
            if not at:
                break  # the set shrank meanwhile: go on from here
            if at[0] > instance_id:
                hi = mid
            else:
                lo = mid + 1
        return self._range(key, lo, num)

    def _check_alive(self, members: list[str], alive: dict[str, bool]) -> bool:
        """Add the liveness of `members` not in `alive` yet (one pipelined EXISTS each); True
        when all of them live."""
        unknown = [m for m in dict.fromkeys(members) if m and m not in alive]
        if unknown:
            pipe = self.r.pipeline(transaction=False)
            for m in unknown:
                pipe.exists(keys.member(m))
            alive.update(zip(unknown, map(bool, pipe.execute()), strict=True))
        return all(alive.get(m, False) for m in members)

    def detail(self, record: InstanceRecord) -> dict[str, Any]:
        """One instance as `GET /instances/<id>` shows it, `member` as the fleet's: the live holder
        or None (the record keeps a suspended or orphaned instance's last holder)."""
        data = record.public(include_member=True)
        if data["member"] and (data["status"] == "suspended" or not self.r.exists(keys.member(data["member"]))):
            data["member"] = None
        return data

    def _records(self, ids: list[str], alive: dict[str, bool]) -> list[dict[str, Any]]:
        """The records of `ids` as the fleet shows them (`usage`: so far, a running run's
        included); `member` is the live holder or None."""
        out = []
        for rec, running in read_page_with_usage(self.r, ids):
            if rec is None:
                continue  # deleted meanwhile
            data = rec.public(include_member=True)
            data["runningRun"] = running
            out.append(data)
        self._check_alive([d["member"] for d in out if d["member"] and d["status"] != "suspended"], alive)
        for data in out:
            if data["status"] == "suspended" or not alive.get(data["member"] or "", False):
                data["member"] = None
        return out
