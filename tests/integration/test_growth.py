"""What an instance leaves goes with DELETE, and every other key has a bound."""

from __future__ import annotations

import httpx
import redis

from regina import keys
from regina.cluster.membership import Membership
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
