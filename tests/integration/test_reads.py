"""Reads change nothing: GET …/messages does not resume a suspended instance, /healthz prunes nothing."""

from __future__ import annotations

import httpx
import redis

from tests.harness.processes import Cluster
from tests.integration.test_api import spawn


def test_messages_of_a_suspended_instance_are_read_without_resuming_it(api: httpx.Client) -> None:
    iid = spawn(api)
    assert api.post(f"/instances/{iid}/chat", json={"message": "keep me"}).status_code == 200
    assert api.post(f"/instances/{iid}/suspend").status_code == 204
    resp = api.get(f"/instances/{iid}/messages")
    assert resp.status_code == 200, resp.text
    assert [m["content"] for m in resp.json()] == ["keep me", "echo: keep me"]
    assert api.get(f"/instances/{iid}").json()["status"] == "suspended"


def test_messages_of_a_suspended_instance_come_from_its_backup(make_cluster: object) -> None:
    c: Cluster = make_cluster(REGINA_STORAGE__TYPE="redis")  # type: ignore[operator]
    w = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        assert api.post(f"/instances/{iid}/chat", json={"message": "backed up"}).status_code == 200
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        w.stop()  # the only worker is gone: the backup is the only copy
        resp = api.get(f"/instances/{iid}/messages")
        assert resp.status_code == 200, resp.text
        assert [m["content"] for m in resp.json()] == ["backed up", "echo: backed up"]
        assert api.get(f"/instances/{iid}").json()["status"] == "suspended"


def test_healthz_prunes_nothing(make_cluster: object) -> None:
    c: Cluster = make_cluster()  # type: ignore[operator]
    web = c.start_web()
    r = redis.Redis.from_url(c.redis_url)
    r.sadd("regina:members", "gone-member")
    assert httpx.get(web.url + "/healthz").json()["workers"] == 0
    assert r.sismember("regina:members", "gone-member")
