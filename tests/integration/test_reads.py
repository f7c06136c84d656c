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


def test_messages_read_while_the_instance_is_backed_up_again_have_no_gap(
    redis_server: object, tmp_path: object
) -> None:
    """GET …/messages of a suspended instance reads its record, then the backup it names, then the
    journal. When the instance is resumed, run and backed up in between, the journal is trimmed
    to the new backup: the old backup plus what is left of the journal missed the turns between."""
    from pathlib import Path

    from regina import ids, keys
    from regina.backups import Backups, backup_key
    from regina.config import Settings
    from regina.journal import JournalVFS
    from regina.lifecycle import Coordinator
    from regina.redis_conn import connect
    from regina.registry import AgentRegistry
    from regina.runtime.messages import user
    from regina.runtime.session import Session
    from regina.vfs import MemoryVFS
    from storage.fs import FsStorage
    from tests.harness.redis_server import RedisServer
    from workers.celery_app import app as celery_app
    from workers.dispatcher import CeleryDispatcher

    assert isinstance(redis_server, RedisServer) and isinstance(tmp_path, Path)
    client = connect(redis_server.url)
    iid = ids.new_instance_id("openai-agent")
    vfs = JournalVFS(MemoryVFS(), epoch=1, seq=0)
    Session(vfs).append(user("one"))
    first = vfs.inner.snapshot()
    vfs.take()
    Session(vfs).append(user("two"), user("three"))
    between = vfs.take()  # seqs 2-3: the journal after the first backup

    class CheckpointDuringRead(FsStorage):
        """The storage; while the first backup is read, the instance is backed up again."""

        def get(self, key: str) -> bytes | None:
            data = super().get(key)
            if key == backup_key(iid, 1, 1) and not client.exists("test:checkpointed"):
                client.set("test:checkpointed", "1", ex=60)
                Backups(client, self).save(iid, 1, 2, vfs.inner.snapshot, journal_seq=vfs.seq)
                Session(vfs).append(user("four"))
                client.rpush(keys.journal(iid), *vfs.take())
            return data

    storage = CheckpointDuringRead(tmp_path / "storage")
    storage.put(backup_key(iid, 1, 1), first)
    client.hset(
        keys.instance_record(iid),
        mapping={
            "definitionId": "openai-agent",
            "status": "suspended",
            "member": "",
            "epoch": "1",
            "backupVersion": "1",
            "backupKey": backup_key(iid, 1, 1),
            "backupSeq": "1",
        },
    )
    client.rpush(keys.journal(iid), *between)
    settings = Settings(redis=redis_server.url, agents_dir=str(Path(__file__).resolve().parents[1] / "agents"))
    registry = AgentRegistry(settings)
    registry.load()
    coordinator = Coordinator(settings, registry, client, CeleryDispatcher(celery_app, client), storage)
    try:
        assert [m["content"] for m in coordinator.messages(iid)] == ["one", "two", "three", "four"]
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid), "test:checkpointed")
        client.close()
