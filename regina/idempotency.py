"""Idempotency-Key semantics (SPEC §12): the same key and body within 24 h do the work once.

A key is scoped per route and per instance (or definition for spawn) and stored hashed, with the
hash of the request body it came with: the same key with another body is a 422. Chat and steer
claim their key inside the script that creates the run or queues the steer
(`regina.runs.store`), so two racing duplicates cannot both do the work. Spawn, which waits on a
worker, claims with SET NX first and stores its answer when done; a duplicate that finds the
claim still pending waits for that answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from regina import keys
from regina.errors import BadRequest, Unavailable, Unprocessable

TTL = 86_400
MAX_KEY_CHARS = 255
PENDING = "pending"


def body_hash(body: Any) -> str:
    """A stable hash of a JSON body (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def redis_key(route: str, scope: str, key: str) -> str:
    """Where the key's record lives; the client's key is hashed (any characters, bounded size)."""
    if not key or len(key) > MAX_KEY_CHARS:
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters")
    return keys.idempotency(route, scope, hashlib.sha256(key.encode()).hexdigest())


def mismatch(route: str) -> Unprocessable:
    """The 422 for a key reused with a different body."""
    return Unprocessable(f"Idempotency-Key was already used on this {route} with a different request body")


def pending_ttl(wait_seconds: float) -> int:
    """Seconds a claim lives while its work runs: three times as long as a duplicate waits for
    it (the work's own bound), at least a minute."""
    return max(60, math.ceil(wait_seconds * 3))


def once(
    client: redis.Redis,
    key: str,
    digest: str,
    work: Callable[[], dict[str, Any]],
    wait_seconds: float,
    route: str = "route",
) -> dict[str, Any]:
    """Do `work` once per key: the first caller runs it and stores its JSON answer; a duplicate
    gets that answer (waiting while it is pending). A failed first attempt frees the key; one
    that never ends (its process killed) leaves a pending claim that expires after
    `pending_ttl(wait_seconds)`, not after the key's 24 h."""
    claim = json.dumps({"h": digest, "state": PENDING})
    if client.set(key, claim, nx=True, ex=pending_ttl(wait_seconds)):
        try:
            answer = work()
        except BaseException:
            client.delete(key)
            raise
        client.set(key, json.dumps({"h": digest, "answer": answer}), ex=TTL)
        return answer
    deadline = time.monotonic() + wait_seconds
    while True:
        raw = cast(str | None, client.get(key))
        if raw is None:  # the first attempt failed meanwhile: do it ourselves
            return once(client, key, digest, work, max(0.0, deadline - time.monotonic()), route)
        stored = json.loads(raw)
        if stored.get("h") != digest:
            raise mismatch(route)
        if "answer" in stored:
            return cast(dict[str, Any], stored["answer"])
        if time.monotonic() > deadline:
            raise Unavailable("a request with this Idempotency-Key is still in progress; retry later")
        time.sleep(0.02)
