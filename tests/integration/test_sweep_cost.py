"""The orphan sweep costs what changed (dead members' instances), not what exists (issue 15, item 9).

Counted with Redis's own `INFO commandstats` on a private Redis: one sweep with N idle
instances on live members sends the same commands whatever N is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from regina import keys
from regina.cluster.orphans import build_indexes, release_previous_incarnation, sweep_orphans
from regina.fleet import Fleet
from regina.instances import InstanceStore
from tests.harness.redis_server import RedisServer
from workers.dispatcher import CeleryDispatcher

LIVE = "live-member"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        r.set(keys.member(LIVE), "127.0.0.1:1")
        r.sadd(keys.MEMBERS, LIVE)
        yield r
        r.close()


def _spawn(store: InstanceStore, n: int, member: str, prefix: str) -> list[str]:
    ids = [f"{prefix}{i:06d}" for i in range(n)]
    for iid in ids:
        store.create(iid, "openai-agent", member)
    return ids


def _commands(r: redis.Redis) -> int:
    stats = cast(dict[str, dict[str, Any]], r.info("commandstats"))
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))


def _sweep_commands(r: redis.Redis, activated: list[str]) -> int:
    r.delete(keys.SWEEP_ORPHANS_LOCK)
    r.config_resetstat()
    # The Redis broker's own answer to "which have steps waiting" (queued, or taken and unacked).
    sweep_orphans(r, activated.append, CeleryDispatcher(cast(Any, None), r).waiting_instances, 10.0)
    return _commands(r)


def test_a_sweep_over_live_members_sends_the_same_commands_at_20_and_2000_instances(client: redis.Redis) -> None:
    store = InstanceStore(client)
    _spawn(store, 20, LIVE, "a")
    small = _sweep_commands(client, [])
    _spawn(store, 1980, LIVE, "b")
    large = _sweep_commands(client, [])
    assert large == small, f"one sweep sent {small} commands at 20 idle instances and {large} at 2000"


def test_a_sweep_reads_only_the_dead_members_instances(client: redis.Redis) -> None:
    # Given 500 instances on a live member and 3 on a member whose key expired (killed)
    store = InstanceStore(client)
    _spawn(store, 500, LIVE, "a")
    dead = "dead-member"
    client.sadd(keys.MEMBERS, dead)
    orphans = _spawn(store, 4, dead, "o")
    client.lpush(keys.instance_queue(orphans[0]), "a step")  # one orphan has a step queued
    client.sadd(keys.unacked_of(keys.instance_queue(orphans[3])), "tag")  # one a step taken, unacked
    activated: list[str] = []

    # When one sweep runs
    commands = _sweep_commands(client, activated)

    # Then the orphan with a step is placed, the others are marked suspended, nothing else moved
    assert sorted(activated) == [orphans[0], orphans[3]]
    statuses = [client.hget(keys.instance_record(iid), "status") for iid in orphans]
    assert statuses == ["started", "suspended", "suspended", "started"]
    assert client.zrange(keys.member_held(dead), 0, -1) == [orphans[0], orphans[3]]  # activate() was a stub
    assert commands < 70, f"a sweep with 4 orphans among 504 instances sent {commands} commands"
    # Once the dead member holds nothing, the sweep forgets it
    store.claim(orphans[0], LIVE)
    store.claim(orphans[3], LIVE)
    _sweep_commands(client, activated)
    assert not client.sismember(keys.HOLDERS, dead)
    assert client.zcard(keys.member_held(LIVE)) == 502


def test_the_held_index_follows_claims_suspends_and_deletes(client: redis.Redis) -> None:
    store = InstanceStore(client)
    (iid,) = _spawn(store, 1, LIVE, "x")
    assert client.zrange(keys.member_held(LIVE), 0, -1) == [iid]
    epoch = store.claim(iid, "other")
    assert client.zrange(keys.member_held(LIVE), 0, -1) == []
    assert client.zrange(keys.member_held("other"), 0, -1) == [iid]
    assert store.fenced_set(iid, epoch, status="suspended")
    assert client.zcard(keys.member_held("other")) == 0
    store.claim(iid, LIVE)
    assert Fleet(client).page(member=LIVE, status="started")[0][0]["instanceId"] == iid
    store.delete(iid, "openai-agent")
    assert client.zcard(keys.member_held(LIVE)) == 0


def test_a_restarted_member_releases_only_what_it_held(client: redis.Redis) -> None:
    store = InstanceStore(client)
    _spawn(store, 300, LIVE, "a")
    mine = _spawn(store, 2, "restarted", "m")
    client.zadd(keys.instance_runs(mine[1]), {"run-1": 1.0})  # a run still open on one of them
    client.config_resetstat()
    assert release_previous_incarnation(client, "restarted", lambda _iid: 0) == 2
    assert _commands(client) < 40
    # The one with a run open is named for the sweep, which resumes it when its step waits
    assert client.smembers(keys.STRANDED) == {keys.instance_queue(mine[1])}
    client.lpush(keys.instance_queue(mine[1]), "a step")
    activated: list[str] = []
    _sweep_commands(client, activated)
    assert activated == [mine[1]] and not client.smembers(keys.STRANDED)


def test_indexes_are_built_once_from_records_written_before_them(client: redis.Redis) -> None:
    # Given records and an unacknowledged step written without the indexes (an earlier version)
    dead = "dead-member"
    for i, (member, status) in enumerate([(LIVE, "started"), (dead, "started"), (dead, "suspended")]):
        client.hset(keys.instance_record(f"old{i}"), mapping={"member": member, "status": status, "epoch": "1"})
        client.zadd(keys.INSTANCES, {f"old{i}": i})
    client.hset("unacked", "tag-1", json.dumps([{"body": "…"}, "", keys.instance_queue("old1")]))
    # When the first worker of this version starts
    assert build_indexes(client) and not build_indexes(client)
    # Then the holding instances are in their members' held sets and the step in its queue's set
    assert client.zrange(keys.member_held(LIVE), 0, -1) == ["old0"]
    assert client.zrange(keys.member_held(dead), 0, -1) == ["old1"]
    assert client.smembers(keys.unacked_of(keys.instance_queue("old1"))) == {"tag-1"}
    # And the sweep finds the dead member's orphan with its step, and drops a stray entry
    client.zadd(keys.member_held(dead), {"gone": 0})
    activated: list[str] = []
    _sweep_commands(client, activated)
    assert activated == ["old1"] and client.zrange(keys.member_held(dead), 0, -1) == ["old1"]
