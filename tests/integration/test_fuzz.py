"""Seeded fuzzing of every route with malformed and hostile requests against a live cluster.

Zero 5xx, every 4xx a JSON `{"error": "<text>"}`, and no key left behind in Redis.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import redis

from regina import keys
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn

SEED = 20261204
REQUESTS = 1200

ROUTES: list[tuple[str, str]] = [
    ("GET", "/agents/{agent}"),
    ("POST", "/agents/{agent}/instances"),
    ("GET", "/agents/{agent}/instances"),
    ("GET", "/instances/{id}"),
    ("POST", "/instances/{id}/heartbeat"),
    ("POST", "/instances/{id}/suspend"),
    ("POST", "/instances/{id}/resume"),
    ("DELETE", "/instances/{id}"),
    ("POST", "/instances/{id}/chat"),
    ("POST", "/instances/{id}/chat/stream"),
    ("POST", "/instances/{id}/steer"),
    ("GET", "/instances/{id}/messages"),
    ("GET", "/runs/{id}"),
    ("GET", "/runs/{id}/events"),
]
FIXED = ["/agents", "/instances", "/healthz", "/metrics", "/admin/agents/errors", "/nope", "/", "/instances/"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _junk_ids(rng: random.Random) -> list[str]:
    return [
        "",
        "x",
        "..",
        "../../etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "..%2f..%2fregina:members",
        "openai-agent-" + "".join(rng.choice("0123456789abcdef") for _ in range(24)),
        "openai-agent-" + "0" * 24,
        "openai-agent",
        "regina:inst:openai-agent-000000000000000000000000",
        "*",
        "?",
        "%00",
        "a" * 4000,
        "ünïcödé-🤖",
        "run-" + "f" * 24,
        " ",
        "openai-agent-ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "__proto__",
        "null",
    ]


def _bodies(rng: random.Random) -> list[tuple[bytes | None, dict[str, str]]]:
    j = {"content-type": "application/json"}
    deep = rng.randint(500, 5000)
    return [
        (None, {}),
        (b"", j),
        (b"{", j),
        (b"{not json", j),
        (b"null", j),
        (b"42", j),
        (b'"message"', j),
        (b"[]", j),
        (b'["message"]', j),
        (b"{}", j),
        (b'{"message": 42}', j),
        (b'{"message": null}', j),
        (b'{"message": ""}', j),
        (b'{"message": "   "}', j),
        (b'{"message": ["a"]}', j),
        (b'{"message": {"text": "a"}}', j),
        (b'{"message": true}', j),
        (b'{"message": "hi \\ud800"}', j),
        (b'{"message": "\\udfff"}', j),
        (b"\xff\xfe\xfd", j),
        (b"[" * deep + b"]" * deep, j),
        (b'{"a":' * deep + b"1" + b"}" * deep, j),
        (json.dumps({"message": "x" * 200_000}).encode(), j),
        (b"message=hello", {"content-type": "application/x-www-form-urlencoded"}),
        (b'{"message": "hi"}', {"content-type": "text/plain"}),
    ]


def _requests(rng: random.Random, live_id: str) -> Iterator[tuple[str, str, bytes | None, dict[str, str]]]:
    ids = _junk_ids(rng)
    defs = [*ids, "openai-agent"]
    bodies = _bodies(rng)
    huge = (b"x" * 1_100_000, {"content-type": "application/json"})
    for n in range(REQUESTS):
        kind = rng.random()
        if kind < 0.08:  # wrong methods on fixed and templated routes
            method = rng.choice(METHODS)
            path = rng.choice(FIXED + [t.format(id=rng.choice(ids)) for _, t in ROUTES[3:5]])
            yield method, path, None, {}
            continue
        method, template = rng.choice(ROUTES)
        if "{agent}" in template:
            def_id = rng.choice(defs)
            if def_id == "openai-agent" and method == "POST":
                yield method, template.format(agent=def_id), *huge  # the only spawn of a real agent: too large
                continue
            path = template.format(agent=def_id)
        else:
            # The live instance only ever gets bodies it must refuse; every other id is junk.
            iid = live_id if rng.random() < 0.15 and template.endswith(("chat", "stream", "steer")) else rng.choice(ids)
            path = template.format(id=iid)
        body, headers = rng.choice(bodies) if method == "POST" else (None, {})
        if iid_is_live(path, live_id) and body is not None and _valid_message(body):
            body = b'{"message": 7}'
        if n % 100 == 7:
            body, headers = huge
        query = rng.choice(["", "?after=-1", "?after=abc", "?after=99999999999999999999", "?ready=1", "?x=%00"])
        yield method, path + query, body, headers


def iid_is_live(path: str, live_id: str) -> bool:
    return f"/{live_id}/" in path or path.endswith(f"/{live_id}")


def _valid_message(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("message"), str) and bool(data["message"].strip())


def _keys(r: redis.Redis) -> dict[str, int]:
    """Every key with its TTL (-1: none)."""
    names = list(r.scan_iter(count=1000))
    pipe = r.pipeline(transaction=False)
    for k in names:
        pipe.ttl(k)
    return {k.decode(): int(t) for k, t in zip(names, pipe.execute(), strict=True)}


def test_a_thousand_hostile_requests_get_clear_4xx_and_leave_no_trace(api: httpx.Client, cluster: Cluster) -> None:
    live_id = spawn(api)
    r = redis.Redis.from_url(cluster.redis_url)
    # Start from a quiet cluster: no step of an earlier test still in flight.
    wait_until(lambda: not r.exists("unacked"), 60, what="earlier tests' steps to finish")
    wait_until(lambda: set(_keys(r)) == set(_keys(r)), 10)
    before = _keys(r)
    rng = random.Random(SEED)
    started = time.monotonic()
    sent = 0
    failures: list[str] = []
    with httpx.Client(base_url=str(api.base_url), timeout=30) as client:
        for method, path, body, headers in _requests(rng, live_id):
            resp = client.request(method, path, content=body, headers=headers)
            sent += 1
            shown = f"{method} {path[:80]} body={(body or b'')[:60]!r} → {resp.status_code} {resp.text[:200]}"
            if resp.status_code >= 500:
                failures.append(shown)
            elif resp.status_code >= 400:
                try:
                    data: Any = resp.json()
                except ValueError:
                    failures.append("not JSON: " + shown)
                    continue
                if not (isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]):
                    failures.append("no error text: " + shown)
    elapsed = time.monotonic() - started
    assert sent >= 1000
    assert not failures, "\n".join(failures[:20])
    after = _keys(r)
    # A key that expires by itself (a worker loop's lock, a reply, an earlier test's run finishing
    # meanwhile) is bounded; a stray key is one that would stay for good.
    new = {k for k in set(after) - set(before) if after[k] == -1 and not _idle_backup(k, before)}
    # The orphan sweep reaps the held set of a member that died (an earlier test's in-process
    # host) whenever it runs: that is the cluster's bookkeeping, not a request's doing.
    lost = {k for k in set(before) - set(after) if before[k] == -1 and not _reaped_held_set(r, k)}
    assert not new, sorted(new)[:20]
    assert not lost, sorted(lost)[:20]
    assert api.get(f"/instances/{live_id}/messages").json() == []
    assert elapsed < 60, f"{sent} requests took {elapsed:.1f}s"


def _idle_backup(key: str, before: dict[str, int]) -> bool:
    """Whether `key` holds the backups of an instance that existed before the requests: the idle
    sweep backs an earlier test's instance up whenever it idles long enough (no request here
    reaches a real instance's suspend; every suspend names a junk id)."""
    prefix = keys.storage_folder(keys.STORAGE_HASH, "instances/")
    if not key.startswith(prefix):
        return False
    return keys.instance_record(key.removeprefix(prefix)) in before


def _reaped_held_set(r: redis.Redis, key: str) -> bool:
    """Whether `key` is the held set of a member that is not live (the sweep removes those)."""
    if not key.startswith(keys.HELD_PREFIX):
        return False
    return not r.exists(keys.member(key.removeprefix(keys.HELD_PREFIX)))
