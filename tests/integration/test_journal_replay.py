"""Replaying an instance's journal (regina/journal.py) on a real Redis."""

from __future__ import annotations

import uuid

from regina import idempotency, keys
from regina.journal import Journal, JournalVFS
from regina.redis_conn import connect
from regina.vfs.memory import MemoryVFS
from tests.harness.redis_server import RedisServer


def _two_appends() -> list[str]:
    """The journal entries of "one" and then "two" appended to /notes.txt (seqs 1 and 2)."""
    recorder = JournalVFS(MemoryVFS(), epoch=1, seq=0)
    recorder.append("/notes.txt", b"one\n")
    recorder.append("/notes.txt", b"two\n")
    return recorder.take()


def test_an_entry_stored_twice_is_applied_once(redis_server: RedisServer) -> None:
    """A flush whose reply was lost (redis-py sends a command again after a dropped connection)
    can leave its entries in the journal twice: the replay applies each seq once."""
    client = connect(redis_server.url, concurrency=1)
    iid = f"replay-{uuid.uuid4().hex[:12]}"
    try:
        entries = _two_appends()
        client.hset(keys.instance_record(iid), "epoch", "1")
        client.rpush(keys.journal(iid), *entries, *entries)  # the second call of the same flush

        target = MemoryVFS()
        last, _size = Journal(client).replay(iid, target, after=0)

        assert target.read("/notes.txt") == b"one\ntwo\n"
        assert last == 2
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()


def test_entries_the_backup_covers_are_skipped(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, concurrency=1)
    iid = f"replay-{uuid.uuid4().hex[:12]}"
    try:
        client.rpush(keys.journal(iid), *_two_appends())
        target = MemoryVFS()
        target.write("/notes.txt", b"one\n")  # the backup holds seq 1

        last, _size = Journal(client).replay(iid, target, after=1)

        assert target.read("/notes.txt") == b"one\ntwo\n"
        assert last == 2
    finally:
        client.delete(keys.journal(iid))
        client.close()


def test_a_pending_idempotency_claim_expires_long_before_the_key(redis_server: RedisServer) -> None:
    """A spawn whose web process dies mid-way (its claim never answered nor freed) blocks the
    key's retries for the claim's pending time, not for the key's 24 h."""
    client = connect(redis_server.url, concurrency=1)
    key = f"regina:idem:test:{uuid.uuid4().hex}"
    seen: list[int] = []
    try:
        answer = idempotency.once(client, key, "digest", lambda: seen.append(client.ttl(key)) or {"ok": 1}, 20)
        assert answer == {"ok": 1}
        assert 0 < seen[0] <= idempotency.pending_ttl(20) == 60
        assert client.ttl(key) > idempotency.TTL - 60  # answered: kept the whole 24 h
    finally:
        client.delete(key)
        client.close()
