"""Backup blobs nobody points at: each is a whole copy of an instance (in the cluster's Redis with
the default storage), so none may stay for good, and none may go while a record still names it.
In-process, the hosts of tests/integration/test_fencing.py over a real Redis and a real Redis
storage whose deletes fail on demand."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regina.backups import Backups
from regina.errors import StorageError
from storage.redis import RedisStorage
from tests.harness.fake_llm import FakeLLM
from tests.harness.redis_server import RedisServer
from tests.integration.test_fencing import Pair


class FlakyStorage(RedisStorage):
    """The real Redis storage; `failing(key)` says which deletes fail (an S3 5xx after its
    retries), and `before_list` runs once before the next `list`."""

    def __init__(self, url: str, prefix: str = "") -> None:
        super().__init__(url, prefix)
        self.failing: Callable[[str], bool] = lambda key: False
        self.before_list: Callable[[], None] | None = None

    def delete(self, key: str) -> None:
        if self.failing(key):
            raise StorageError(f"storage: delete {key!r} failed (on purpose)")
        super().delete(key)

    def list(self, prefix: str = "") -> builtins.list[str]:
        hook, self.before_list = self.before_list, None
        if hook is not None:
            hook()
        return super().list(prefix)


@pytest.fixture
def pair(
    redis_server: RedisServer, fake_llm: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")
    p = Pair(redis_server.url, tmp_path, FlakyStorage)
    yield p
    p.storage.close()


def flaky(pair: Pair) -> FlakyStorage:
    assert isinstance(pair.storage, FlakyStorage)
    return pair.storage


def stored(pair: Pair, iid: str) -> list[str]:
    return pair.storage.list(f"instances/{iid}/")


def current(pair: Pair, iid: str) -> str:
    rec = pair.store.get(iid)
    assert rec is not None
    return rec.backup_key


def contents(pair: Pair, host: str, iid: str) -> list[str]:
    return [m["content"] for m in pair.hosts[host].messages(iid)]


def test_what_a_failed_delete_or_a_worker_killed_before_its_commit_left_goes_at_the_next_commit(pair: Pair) -> None:
    # Given an instance whose suspend could not delete the backup it replaced (storage hiccup)
    a, b = pair.hosts["a"], pair.hosts["b"]
    st = flaky(pair)
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "one", True)
    assert a.suspend(iid)["backedUp"]
    a.attach(iid, pair.move(iid, "a"))
    a.run_step(iid, pair.new_run(iid), "two", True)
    st.failing = lambda key: True
    assert a.suspend(iid)["backedUp"]
    st.failing = lambda key: False
    assert len(stored(pair, iid)) == 2
    # and a worker killed after putting its next backup, before committing it
    epoch = pair.move(iid, "a")
    a.attach(iid, epoch)
    snap = a.backups.snapshot_vfs(iid, epoch, pair.store.get(iid).backup_version + 1, a.active[iid].vfs)  # type: ignore[union-attr]
    st.put(snap.key, snap.data)
    assert len(stored(pair, iid)) == 3

    # When the instance's next owner backs it up
    b.attach(iid, pair.move(iid, "b"))
    b.run_step(iid, pair.new_run(iid), "three", True)
    assert b.suspend(iid)["backedUp"]

    # Then only the backup the record names is left, and it holds the whole conversation
    assert stored(pair, iid) == [current(pair, iid)]
    b.attach(iid, pair.move(iid, "b"))
    assert contents(pair, "b", iid) == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]


def test_a_commit_never_deletes_the_backup_a_newer_owner_committed_meanwhile(pair: Pair) -> None:
    # Given an instance on a whose suspend has committed its backup
    a, b = pair.hosts["a"], pair.hosts["b"]
    st = flaky(pair)
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "one", True)

    def newer_owner_backs_up() -> None:
        # When, before a removes the older backups, a was taken for gone and b ran and backed up
        b.attach(iid, pair.move(iid, "b"))
        b.run_step(iid, pair.new_run(iid), "two", True)
        assert b.suspend(iid)["backedUp"]

    st.before_list = newer_owner_backs_up
    assert a.suspend(iid)["backedUp"]
    assert st.before_list is None  # it ran

    # Then b's backup is still there, named by the record, and it is the only one
    assert stored(pair, iid) == [current(pair, iid)]
    assert current(pair, iid).startswith(f"instances/{iid}/vfs.2.")
    b.attach(iid, pair.move(iid, "b"))
    assert contents(pair, "b", iid) == ["one", "echo: one", "two", "echo: two"]


def test_a_delete_that_fails_midway_leaves_the_instance_whole_and_can_be_sent_again(pair: Pair) -> None:
    # Given an instance backed up 10 times whose last suspend could not delete the one before:
    # its record names vfs.1.10, and vfs.1.9 is left (it sorts after vfs.1.10)
    a, b = pair.hosts["a"], pair.hosts["b"]
    st = flaky(pair)
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "remember me", True)
    act = a.active[iid]
    for version in range(1, 10):
        a.backups.save_vfs(iid, act.epoch, version, act.vfs)
    st.failing = lambda key: True
    assert a.suspend(iid)["backedUp"]
    assert stored(pair, iid) == [f"instances/{iid}/vfs.1.10", f"instances/{iid}/vfs.1.9"]
    assert current(pair, iid) == f"instances/{iid}/vfs.1.10"

    # When a DELETE removes its backups (its first step) and storage fails on the second delete
    tried: list[str] = []

    def second_fails(key: str) -> bool:
        tried.append(key)
        return len(tried) == 2

    st.failing = second_fails
    with pytest.raises(StorageError):  # the DELETE answers 503
        Backups(pair.r, st).delete_all(iid)

    # Then the backup the record names is still there: the instance resumes with its conversation
    assert current(pair, iid) in stored(pair, iid)
    b.attach(iid, pair.move(iid, "b"))
    assert contents(pair, "b", iid) == ["remember me", "echo: remember me"]
    # and the DELETE sent again removes everything
    st.failing = lambda key: False
    Backups(pair.r, st).delete_all(iid)
    assert stored(pair, iid) == []
