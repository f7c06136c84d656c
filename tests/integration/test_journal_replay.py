"""Replaying an instance's journal (regina/journal.py) on a real Redis."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from regina import idempotency, keys
from regina import journal as journal_module
from regina.activation import local_path, open_current
from regina.backups import Backups
from regina.config import Settings
from regina.factory_hooks import FactoryHooks
from regina.instances import InstanceRecord, InstanceStore
from regina.journal import Journal, JournalVFS
from regina.redis_conn import connect
from regina.vfs import SQLiteVFS
from regina.vfs.memory import MemoryVFS
from storage.fs import FsStorage
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


# -- a worker killed while it replays, or between a change and its dirty mark -------------------


class _Killed(BaseException):
    """Stands for a kill -9 at that instant: nothing after it runs (no except clause catches it)."""


def _instance_with_journal(client: Any, settings: Settings, storage_dir: Path) -> tuple[str, Backups]:
    """An instance backed up at seq 0 whose journal then holds an append, a mkdir and a rename
    (seqs 1-3), with no local copy on this disk (another member made them)."""
    iid = f"openai-agent-{uuid.uuid4().hex[:24]}"
    client.hset(keys.instance_record(iid), mapping={"epoch": "1", "status": "started", "definitionId": "openai-agent"})
    backups = Backups(client, FsStorage(storage_dir))
    vfs = SQLiteVFS(local_path(settings, iid))
    recorder = JournalVFS(vfs, epoch=1, seq=0)
    backups.save_vfs(iid, 1, 1, recorder)
    recorder.append("/notes.txt", b"hi\n")
    recorder.mkdir("/a")
    recorder.rename("/a", "/b")
    Journal(client).flush(iid, 1, recorder)
    vfs.close()
    os.remove(local_path(settings, iid))
    return iid, backups


def _journaled(redis_server: RedisServer, tmp_path: Path) -> tuple[Any, Settings, str, Backups, InstanceRecord]:
    """A client, this disk's settings, and `_instance_with_journal`'s instance with its record."""
    client = connect(redis_server.url, concurrency=1)
    settings = Settings(vfs_dir=str(tmp_path / "vfs"))
    os.makedirs(settings.vfs_dir)
    iid, backups = _instance_with_journal(client, settings, tmp_path / "store")
    rec = InstanceStore(client).get(iid)
    assert rec is not None
    return client, settings, iid, backups, rec


def test_a_replay_cut_short_is_not_trusted_by_the_next_attach(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after two of three entries: the copy on disk says the backup's seq, and trusting
    it would apply them again (the append twice, the rename of a path that is gone)."""
    client, settings, iid, backups, rec = _journaled(redis_server, tmp_path)
    try:
        applied: list[str] = []
        real_apply = journal_module.apply

        def killed_after_two(vfs: Any, op: str, args: list[Any]) -> None:
            real_apply(vfs, op, args)
            applied.append(op)
            if len(applied) == 2:
                raise _Killed()

        monkeypatch.setattr(journal_module, "apply", killed_after_two)
        with pytest.raises(_Killed):
            open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        monkeypatch.setattr(journal_module, "apply", real_apply)

        opened = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        try:
            assert opened.vfs.read("/notes.txt") == b"hi\n"
            assert opened.vfs.exists("/b") and not opened.vfs.exists("/a")
            assert opened.journal_seq == 3
        finally:
            opened.vfs.close()
        # ... and a third attach trusts the copy the second one left (nothing downloaded again).
        again = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        try:
            assert not again.restored and again.vfs.read("/notes.txt") == b"hi\n"
        finally:
            again.vfs.close()
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()


def test_a_change_is_never_in_a_copy_marked_clean(redis_server: RedisServer, tmp_path: Path) -> None:
    """Killed between a change's commit and its journaling: the copy must already say dirty, or
    the next attach would trust a file holding a change the cluster never heard of."""
    client, settings, iid, backups, rec = _journaled(redis_server, tmp_path)
    try:
        opened = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        vfs = opened.vfs
        backups.save_vfs(iid, 1, 2, JournalVFS(vfs, epoch=1, seq=opened.journal_seq))  # a clean copy
        rec = InstanceStore(client).get(iid)
        assert rec is not None

        class KilledRecorder(JournalVFS):
            def record(self, op: str, *args: Any) -> None:
                raise _Killed()  # the change is committed; its entry never made

        with pytest.raises(_Killed):
            KilledRecorder(vfs, epoch=1, seq=opened.journal_seq).append("/notes.txt", b"lost?\n")
        vfs.close()

        again = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        try:
            assert again.restored  # from the backup: the local copy was not trusted
            assert again.vfs.read("/notes.txt") == b"hi\n"
        finally:
            again.vfs.close()
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()


def test_a_flush_of_ten_thousand_changes_is_stored_whole(redis_server: RedisServer) -> None:
    """One tool call can make thousands of changes (`touch f{1..4000}` makes 8 000 entries); Lua's
    `unpack` stops near 8 000 values, so the flush pushes them in chunks."""
    client = connect(redis_server.url, concurrency=1)
    iid = f"replay-{uuid.uuid4().hex[:12]}"
    try:
        client.hset(keys.instance_record(iid), "epoch", "3")
        recorder = JournalVFS(MemoryVFS(), epoch=3, seq=0)
        for i in range(10_000):
            recorder.append("/many.txt", b"%d\n" % i)
        Journal(client).flush(iid, 3, recorder)

        assert recorder.pending == []
        assert client.llen(keys.journal(iid)) == 10_000
        assert client.hget(keys.instance_record(iid), "journalSeq") == "10000"
        target = MemoryVFS()
        last, _size = Journal(client).replay(iid, target, after=0)
        assert last == 10_000 and target.read("/many.txt") == b"".join(b"%d\n" % i for i in range(10_000))
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()


def test_a_backup_commit_whose_reply_was_lost_keeps_the_backup_it_made(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The commit ran (record pointed at the new blob, journal trimmed), its reply was lost, the
    epoch moved on meanwhile, and redis-py sent the commit again: the second run must answer what
    the first did, not STALE — on STALE the owner deletes the blob, the one the record names."""
    import redis as redis_module

    from tests.harness.lossy_proxy import LossyProxy

    iid = f"replay-{uuid.uuid4().hex[:12]}"
    direct = redis_module.Redis.from_url(redis_server.url, decode_responses=True)
    direct.hset(keys.instance_record(iid), mapping={"epoch": "5", "backupKey": "instances/x/vfs.4.9"})
    direct.rpush(keys.journal(iid), *_two_appends())
    storage = FsStorage(str(tmp_path / "storage"))
    from regina import backups as backups_module

    direct.script_load(backups_module._COMMIT)  # the lost reply is the commit's own, not NOSCRIPT's
    with LossyProxy("127.0.0.1", redis_server.port) as proxy:
        client = connect(proxy.url, concurrency=1)
        try:
            proxy.lose_reply_to(b"vfs.5.1", meanwhile=lambda: direct.hset(keys.instance_record(iid), "epoch", "6"))
            Backups(client, storage).save(iid, 5, 1, lambda: b"the snapshot", journal_seq=2)
            assert proxy.lost.is_set()
            rec = direct.hgetall(keys.instance_record(iid))
            assert rec["backupKey"] == f"instances/{iid}/vfs.5.1" and rec["backupSeq"] == "2"
            assert storage.get(f"instances/{iid}/vfs.5.1") == b"the snapshot"
            assert direct.llen(keys.journal(iid)) == 0
        finally:
            client.close()
            direct.delete(keys.instance_record(iid), keys.journal(iid))
            direct.close()


def test_an_entry_that_cannot_apply_is_skipped_not_an_instance_that_never_attaches(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tool process that wrote /copy and died before reporting it, then a journaled rename of
    /copy: replayed over the backup elsewhere, the rename has no source. Every attach failed on it."""
    client, settings, iid, backups, rec = _journaled(redis_server, tmp_path)
    try:
        client.rpush(keys.journal(iid), '4 [1,"rename","/copy","/renamed"]', '5 [1,"append","/notes.txt","u","hi\\n"]')
        with caplog.at_level("WARNING", logger="regina.journal"):
            opened = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
        try:
            assert opened.journal_seq == 5 and opened.vfs.exists("/b") and not opened.vfs.exists("/renamed")
            assert opened.vfs.read("/notes.txt") == b"hi\nhi\n"  # the entries after it applied
        finally:
            opened.vfs.close()
        assert any("journal entry 4 (rename) skipped" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()


def test_an_answer_left_behind_is_in_the_next_attach_after_a_kill(redis_server: RedisServer, tmp_path: Path) -> None:
    """A run's last answer is journaled, shipped with the run's end and only then appended to the
    local file (`JournalVFS.append_behind`). Killed in between, the next attach has it: from the
    journal on top of a copy that was clean (trusted), and on top of one that was not."""
    client, settings, iid, backups, rec = _journaled(redis_server, tmp_path)
    try:
        for clean in (True, False):
            opened = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
            recorder = JournalVFS(opened.vfs, epoch=1, seq=opened.journal_seq)
            if clean:
                backups.save_vfs(iid, 1, rec.backup_version + 1, recorder)  # a clean copy
                rec = InstanceStore(client).get(iid)
                assert rec is not None
            else:
                recorder.append("/notes.txt", b"tool\n")  # a change before the answer: dirty
            before = opened.vfs.read("/notes.txt")
            recorder.append_behind("/notes.txt", b"answer\n")
            Journal(client).flush(iid, 1, recorder)  # the run's end ships it
            assert opened.vfs.read("/notes.txt") == before  # (the file itself, not through the recorder)
            opened.vfs.close()  # killed here: the local append never made

            again = open_current(settings, FactoryHooks(), backups, Journal(client), rec)
            try:
                text = again.vfs.read("/notes.txt")
                assert text.endswith(b"answer\n") and text.count(b"answer") == (1 if clean else 2), (clean, text)
                assert again.journal_seq == recorder.seq
            finally:
                again.vfs.close()
    finally:
        client.delete(keys.instance_record(iid), keys.journal(iid))
        client.close()
