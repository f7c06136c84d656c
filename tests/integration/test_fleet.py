"""The fleet view (SPEC §12): filters and cursor pages over 2 000 instances, each page quick.

The records are written with the core's own `InstanceStore` into a private Redis (spawning 2 000
instances through workers would take minutes); the listing goes through a real web process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import redis

from regina import keys
from regina.instances import InstanceStore
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until


def test_fleet_pages_filters_and_stays_quick_over_2000_instances(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    store = InstanceStore(r)
    for m in ("m0", "m1", "m2", "m3"):
        r.set(keys.member(m), "127.0.0.1:1", ex=600)  # live members (a dead one's are held by no one)
    made: list[str] = []
    for n in range(2000):
        iid = f"{'openai-agent' if n % 2 else 'tool-agent'}-{n:024x}"
        store.create(iid, iid.rsplit("-", 1)[0], f"m{n % 4}")
        if n % 5 == 0:
            store.fenced_set(iid, 1, status="suspended")
        made.append(iid)
    r.hset(store_key := f"regina:inst:{made[7]}", mapping={"promptTokens": 11, "completionTokens": 4})
    r.zadd(f"regina:inst:{made[7]}:runs", {"run-abc": 1.0})
    r.hset("regina:run:run-abc", mapping={"instanceId": made[7], "status": "running"})
    assert store_key

    with httpx.Client(base_url=web.url, timeout=30) as api:

        def walk(**params: Any) -> tuple[list[dict[str, Any]], float]:
            items: list[dict[str, Any]] = []
            slowest = 0.0
            cursor = None
            while True:
                started = time.monotonic()
                resp = api.get("/instances", params={**params, **({"cursor": cursor} if cursor else {})})
                slowest = max(slowest, time.monotonic() - started)
                assert resp.status_code == 200, resp.text
                items += resp.json()
                cursor = resp.headers.get("X-Next-Cursor")
                if cursor is None:
                    return items, slowest

        items, slowest = walk(limit=150)
        assert [i["instanceId"] for i in items] == made  # every instance once, oldest first
        assert slowest < 2.0, slowest
        first = items[7]
        assert set(first) >= {
            "instanceId",
            "definitionId",
            "status",
            "member",
            "epoch",
            "createdAt",
            "lastActive",
            "vfsBytes",
            "usage",
            "runningRun",
        }
        assert first["usage"] == {"promptTokens": 11, "completionTokens": 4} and first["runningRun"] == "run-abc"
        assert items[0]["status"] == "suspended" and items[1]["status"] == "started"

        suspended, _ = walk(status="suspended", limit=100)
        assert [i["instanceId"] for i in suspended] == made[::5]
        on_m1, _ = walk(member="m1", agent="openai-agent", limit=77)
        assert [i["instanceId"] for i in on_m1] == [iid for n, iid in enumerate(made) if n % 4 == 1 and n % 5]

        assert api.get("/instances", params={"limit": "0"}).status_code == 400
        assert api.get("/instances", params={"status": "zombie"}).status_code == 400
        assert api.get("/instances", params={"cursor": "!!"}).status_code == 400
        assert api.get("/instances", params={"agent": "no-such-agent"}).status_code == 404


def test_instances_stay_listed_by_agent_when_their_definition_breaks_or_goes(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Before: a reload dropped an agent whose file became invalid, and GET /instances?agent=X and
    # GET /agents/X/instances answered 404 while X's instances existed.
    agents = tmp_path / "agents"
    agents.mkdir()
    alpha = agents / "alpha.md"
    alpha.write_text("---\nname: alpha\nmodel: gpt-4o\n---\nYou are alpha.\n")
    c = make_cluster(REGINA_AGENTS_DIR=str(agents))
    web = c.start_web()
    store = InstanceStore(redis.Redis.from_url(c.redis_url, decode_responses=True))
    made = {
        agent: [store.create(f"{agent}-{n:024x}", agent, "m1").instance_id for n in range(3)]
        for agent in ("alpha", "gone")  # `gone`: instances whose definition file was removed
    }
    alpha.write_text("---\nname: alpha\nmodel: gpt-4o\nmaxStep: 3\n---\nYou are alpha.\n")
    with httpx.Client(base_url=web.url, timeout=30) as api:
        reloaded = api.post("/admin/agents/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["agents"] == ["alpha"]
        [error] = reloaded.json()["errors"]
        assert error["file"] == str(alpha) and "'maxStep'" in error["error"]
        assert "the previous version of 'alpha' is kept" in error["error"]
        assert api.get("/admin/agents/errors").json() == [error]
        assert api.get("/agents/alpha").status_code == 200
        for agent, ids in made.items():
            listed = api.get("/instances", params={"agent": agent})
            assert listed.status_code == 200, listed.text
            assert [i["instanceId"] for i in listed.json()] == ids
            listed = api.get(f"/agents/{agent}/instances")
            assert listed.status_code == 200, listed.text
            assert [i["instanceId"] for i in listed.json()] == ids
        # An agent with neither a definition nor instances is still unknown.
        assert api.get("/instances", params={"agent": "no-such-agent"}).status_code == 404
        assert api.get("/agents/no-such-agent/instances").status_code == 404

    # Processes started after the break serve alpha too (its last good text is shared in Redis):
    # before, a new web answered 404 for it and a new worker could not attach its instances.
    c.start_worker()
    later = c.start_web()
    with httpx.Client(base_url=later.url, timeout=30) as api:
        assert api.get("/agents/alpha").status_code == 200
        [error] = api.get("/admin/agents/errors").json()
        assert "the previous version of 'alpha' is kept" in error["error"]
        iid = api.post("/agents/alpha/instances").json()["instanceId"]
        answer = api.post(f"/instances/{iid}/chat", json={"message": "still here"})
        assert answer.status_code == 200 and answer.json()["text"] == "echo: still here", answer.text


def test_member_is_the_live_holder_and_the_member_filter_matches_only_what_it_holds(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Before: a suspended instance showed its last holder, an orphan its dead member, and
    # ?member=m matched both.
    c = make_cluster()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    store = InstanceStore(r)
    live, dead = "m-live", "m-dead"  # `dead` has no member key: its worker died
    r.set(keys.member(live), "127.0.0.1:1", ex=600)
    held, suspended, orphan = (
        store.create(f"openai-agent-{n:024x}", "openai-agent", m).instance_id for n, m in enumerate((live, live, dead))
    )
    store.fenced_set(suspended, 1, status="suspended")
    with httpx.Client(base_url=web.url, timeout=30) as api:
        for params in ({}, {"agent": "openai-agent"}):
            shown = {i["instanceId"]: (i["status"], i["member"]) for i in api.get("/instances", params=params).json()}
            assert shown == {held: ("started", live), suspended: ("suspended", None), orphan: ("started", None)}
        # One instance's own view shows the same member (it showed the record's last holder).
        for iid, member in ((held, live), (suspended, None), (orphan, None)):
            assert api.get(f"/instances/{iid}").json()["member"] == member, iid
        for params, expected in (
            ({"member": live}, [held]),
            ({"member": live, "status": "started"}, [held]),
            ({"member": live, "status": "suspended"}, []),
            ({"member": live, "agent": "openai-agent"}, [held]),
            ({"member": dead}, []),
            ({"member": dead, "status": "started"}, []),
        ):
            resp = api.get("/instances", params=params)
            assert resp.status_code == 200 and "X-Next-Cursor" not in resp.headers, resp.text
            assert [i["instanceId"] for i in resp.json()] == expected, params

        # The liveness check costs one EXISTS per distinct member on a page, not one per instance.
        for n in range(600):
            store.create(f"tool-agent-{n:024x}", "tool-agent", f"m{n % 6}")
        r.config_resetstat()
        assert len(api.get("/instances", params={"limit": "500"}).json()) == 500
        stats = cast(dict[str, dict[str, Any]], r.info("commandstats"))
        assert stats.get("cmdstat_exists", {}).get("calls", 0) <= 3 + 6, stats.get("cmdstat_exists")


def test_pages_serve_every_instance_once_when_many_share_one_created_at(make_cluster: Callable[..., Cluster]) -> None:
    # Before: a page re-read a tied score from its start, limit + 50 entries at most, so past
    # that many instances with one createdAt (a coarse clock, a restore) the rest were skipped.
    c = make_cluster()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    store = InstanceStore(r)
    scores = {f"tool-agent-{n:024x}": 500.0 + 500 * (n >= 10) + 1000 * (n >= 140) for n in range(150)}
    for iid, score in scores.items():
        store.create(iid, "tool-agent", "m0")
        r.zadd(keys.INSTANCES, {iid: score})
    expected = sorted(scores, key=lambda iid: (scores[iid], iid))
    with httpx.Client(base_url=web.url, timeout=30) as api:
        served: list[str] = []
        cursor = None
        pages = 0
        while True:
            resp = api.get("/instances", params={"limit": 7, **({"cursor": cursor} if cursor else {})})
            assert resp.status_code == 200, resp.text
            served += [i["instanceId"] for i in resp.json()]
            pages += 1
            cursor = resp.headers.get("X-Next-Cursor")
            if cursor is None:
                break
            if pages in (5, 12):  # the cursor's own instance goes: the page after it is found by search
                store.delete(served[-1], "tool-agent")
    assert served == expected


def test_a_started_instance_reports_its_vfs_size_before_any_backup(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    # Before: vfsBytes was written by backups only, so a started instance showed 0 (or its last
    # backup's size) however much its files grew; without storage it stayed 0 for good.
    c = make_cluster(REGINA_IDLE_TIMEOUT="0")  # no suspend: no backup writes vfsBytes
    c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=30) as api:
        iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
        fake_llm.push(
            Reply(tool_calls=[ToolCall("write_file", {"path": "/big.txt", "content": "x" * 400_000})]),
            Reply(text="written"),
        )
        assert api.post(f"/instances/{iid}/chat", json={"message": "write"}).json()["text"] == "written"

        def size() -> int:
            return cast(int, api.get(f"/instances/{iid}").json()["vfsBytes"])

        wait_until(lambda: size() >= 400_000, timeout=20, what="the VFS size reported")
        detail = api.get(f"/instances/{iid}").json()
        assert detail["status"] == "started" and detail["member"] is not None
        [listed] = [i for i in api.get("/instances").json() if i["instanceId"] == iid]
        assert listed["vfsBytes"] == detail["vfsBytes"]
