"""The fleet view (SPEC §12): every instance, filtered and paginated, fast at 100 000 instances.

Pages walk the `createdAt`-scored set of instance ids (`keys.INSTANCES`, or one definition's
set) from an opaque cursor — the last (score, id) served — so a page costs O(log n + page) in
Redis however deep it is, and instances created or deleted meanwhile never shift later pages.
Filters on `status` and `member` are applied to the records read; a page scans at most
`SCAN_LIMIT` ids, so a rare filter can return a short (even empty) page with a cursor to go on.
`member` with `status=started|suspending` (what a worker runs) walks that member's held set
(`keys.member_held`, also scored by createdAt) instead, so its pages cost O(page) however few
of the fleet's instances the member runs.
"""

from __future__ import annotations

import base64
import math
from typing import Any, cast

import redis

from regina import keys
from regina.errors import BadRequest
from regina.instances import record_from_hash

MAX_LIMIT = 1000
HOLDING = ("started", "suspending")
SCAN_LIMIT = 5000


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
        if member is not None and status in HOLDING:
            key = keys.member_held(member)  # what a member runs: its held set, not a scan
        after_score, after_id = decode_cursor(cursor) if cursor else (float("-inf"), "")
        out: list[dict[str, Any]] = []
        scanned = 0
        while len(out) < limit and scanned < SCAN_LIMIT:
            batch = cast(
                list[tuple[str, float]],
                self.r.zrangebyscore(key, after_score, "+inf", start=0, num=limit + 50, withscores=True),
            )
            # Same-score entries come in id order: skip the ones served already.
            batch = [(i, s) for i, s in batch if s > after_score or i > after_id]
            if not batch:
                return out, None
            scanned += len(batch)
            for item in self._records([i for i, _ in batch]):
                if (
                    (status is None or item["status"] == status)
                    and (member is None or item["member"] == member)
                    and (agent is None or item["definitionId"] == agent)
                ):
                    out.append(item)
                    if len(out) == limit:
                        last = next(s for i, s in batch if i == item["instanceId"])
                        return out, encode_cursor(last, item["instanceId"])
            after_id, after_score = batch[-1]
        return out, encode_cursor(after_score, after_id)

    def _records(self, ids: list[str]) -> list[dict[str, Any]]:
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.hgetall(keys.instance_record(iid))
            pipe.zrange(keys.instance_runs(iid), 0, 0)
        replies = pipe.execute()
        out = []
        for n, iid in enumerate(ids):
            h, running = replies[2 * n], replies[2 * n + 1]
            if not h:
                continue  # deleted meanwhile
            data = record_from_hash(iid, h).public(include_member=True)
            data["runningRun"] = running[0] if running else None
            out.append(data)
        return out
