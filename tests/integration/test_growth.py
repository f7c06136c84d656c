"""What an instance leaves goes with DELETE, and every other key has a bound."""

from __future__ import annotations

import json

import httpx
import redis

from regina import keys
from regina.cluster.membership import Membership
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def test_member_instance_counter_keeps_a_ttl_after_it_expired(make_cluster: object) -> None:
    # A slow heartbeat: the counter is not renewed while the test looks at it.
    c: Cluster = make_cluster(REGINA_MEMBER_HEARTBEAT="30", REGINA_MEMBER_TTL="60")  # type: ignore[operator]
    w = c.start_worker()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url)
    counter = f"regina:member:{w.member_id}:instances"
    r.delete(counter)  # as if it had expired between two renewals
    with httpx.Client(base_url=web.url, timeout=60) as api:
        spawn(api)
    assert r.get(counter) == b"1"
    assert r.pttl(counter) > 0, "the counter was recreated without a TTL"


def test_delete_removes_the_files_an_earlier_owner_kept(make_cluster: object) -> None:
    c: Cluster = make_cluster()  # type: ignore[operator]
    w1 = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        assert api.post(f"/instances/{iid}/chat", json={"message": "on w1"}).status_code == 200
        w1_file = c.tmp / f"vfs-{w1.member_id.split('@')[0]}" / f"{iid}.sqlite"
        assert w1_file.exists()
        w1.kill()
        c.start_worker()
        # The instance moves to the second worker; the first one comes back with its old disk.
        wait_until(lambda: api.post(f"/instances/{iid}/chat", json={"message": "on w2"}).status_code == 200, 30)
        c.start_worker(member_id=w1.member_id)
        assert api.delete(f"/instances/{iid}").status_code == 204
        wait_until(lambda: not w1_file.exists(), 10, what="the earlier owner's VFS file to go")


def test_a_renewal_never_undoes_an_attach_counted_meanwhile(redis_server: RedisServer) -> None:
    # Given a member whose heartbeat read its count (0) just before an attach counted itself
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    member = Membership(r, "race-member@test", "addr", ttl=30)
    member.register(0)
    counter = keys.member_instances("race-member@test")
    r.incrby(counter, 1)

    # When the renewal that read 0 lands after the attach's increment
    member.renew(0)

    # Then the counter keeps the attach (least-loaded sees the member as it is) and its TTL
    assert r.get(counter) == "1" and r.pttl(counter) > 0
    # and a difference that lasts two renewals (an increment lost to an error) is set right
    member.renew(1)
    r.set(counter, 7)
    member.renew(1)
    assert r.get(counter) == "7"
    member.renew(1)
    assert r.get(counter) == "1"
    member.deregister()
    r.close()


def test_a_runs_events_have_a_ttl_while_it_runs_and_a_bounded_length(make_cluster: object, fake_llm: FakeLLM) -> None:
    # Given a cluster whose runs keep at most 100 events
    c: Cluster = make_cluster(REGINA_LIMITS__MAX_RUN_EVENTS="100")  # type: ignore[operator]
    c.start_worker()
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url)
    words = " ".join(f"w{i}" for i in range(300))
    fake_llm.push_for("long answer", Reply(text=words, chunk_delay=0.01))
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        # When a streamed run is half-way (its worker could be killed now and the run never end)
        with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "long answer"}) as resp:
            lines = resp.iter_lines()
            first = json.loads(next(line for line in lines if '"text-delta"' in line))
            events = f"regina:run:{first['runId']}:events"
            # Then its events already expire by themselves
            assert r.ttl(events) > 0, "a running run's event stream has no TTL: a killed run's events stay for good"
            last = json.loads(list(lines)[-1])
    # And the ended run keeps its last 100 events, the terminal one last
    assert last["type"] == "finish" and last["seq"] > 300
    assert r.xlen(events) == 100
    assert json.loads(r.xrevrange(events, count=1)[0][1][b"e"])["type"] == "finish"
    assert 0 < r.ttl(events) <= 3600


def test_steering_is_bounded_per_instance(api: httpx.Client, cluster: Cluster) -> None:
    # Given an instance with no run to take its steering (default limits.maxSteering: 100)
    iid = spawn(api)
    for n in range(100):
        assert api.post(f"/instances/{iid}/steer", json={"message": f"note {n}"}).status_code == 200
    # When one more is sent, as a steer or as a chat that steers the busy run
    resp = api.post(f"/instances/{iid}/steer", json={"message": "one too many"})
    # Then it is refused with 429 and Retry-After, naming the limit, and nothing was added
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert "limits.maxSteering" in resp.json()["error"]
    assert redis.Redis.from_url(cluster.redis_url).llen(f"regina:steer:{iid}") == 100
    api.delete(f"/instances/{iid}")


def test_a_restarted_member_removes_its_copies_of_deleted_and_moved_instances(make_cluster: object) -> None:
    # Given three instances on w1: one it suspends (its copy stays its own), two it holds
    c: Cluster = make_cluster()  # type: ignore[operator]
    w1 = c.start_worker()
    web = c.start_web()
    vfs = c.tmp / f"vfs-{w1.member_id.split('@')[0]}"
    with httpx.Client(base_url=web.url, timeout=60) as api:
        kept, moved, deleted = spawn(api), spawn(api), spawn(api)
        for iid in (kept, moved, deleted):
            assert api.post(f"/instances/{iid}/chat", json={"message": "on w1"}).status_code == 200
        assert api.post(f"/instances/{kept}/suspend").status_code == 204

        # When w1 is killed, one instance moves to w2 and another is deleted while w1 is down
        w1.kill()
        c.start_worker()
        wait_until(lambda: api.post(f"/instances/{moved}/chat", json={"message": "on w2"}).status_code == 200, 30)
        assert api.delete(f"/instances/{deleted}").status_code == 204
        assert (vfs / f"{moved}.sqlite").exists() and (vfs / f"{deleted}.sqlite").exists()

        # Then w1, back on the same disk under the same member id, removes those two copies at start
        c.start_worker(member_id=w1.member_id)
        assert not (vfs / f"{deleted}.sqlite").exists(), "a deleted instance's files stayed on disk"
        assert not (vfs / f"{moved}.sqlite").exists(), "a copy of an instance another member owns stayed"
        assert (vfs / f"{kept}.sqlite").exists()
        assert [m["content"] for m in api.get(f"/instances/{kept}/messages").json()] == ["on w1", "echo: on w1"]


def test_a_local_copy_that_cannot_be_read_does_not_keep_a_worker_from_joining(make_cluster: object) -> None:
    """A damaged file in vfsDir (a disk filled during a restore, a power loss) whose instance
    another member owns: reading who wrote it raised at every start, inside the worker's ready
    handler, and the worker ran on without ever joining (never ready, serving nothing)."""
    import redis as redis_module

    from regina import ids, keys

    c: Cluster = make_cluster()  # type: ignore[operator]
    member = "w9-damaged@test"
    vfs = c.tmp / f"vfs-{member.split('@')[0]}"
    vfs.mkdir(parents=True)
    iid = ids.new_instance_id("openai-agent")
    (vfs / f"{iid}.sqlite").write_bytes(b"not a database, " * 64)
    r = redis_module.Redis.from_url(c.redis_url, decode_responses=True)
    r.hset(keys.instance_record(iid), mapping={"status": "started", "member": "another@test", "epoch": "1"})
    try:
        w = c.start_worker(member_id=member)  # waits for its "ready" line
        assert r.exists(keys.member(w.member_id))
        assert (vfs / f"{iid}.sqlite").exists()  # who wrote it is unknown: left as it is
        assert "could not read" in w.log()
    finally:
        r.delete(keys.instance_record(iid))
        r.close()
