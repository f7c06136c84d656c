"""A worker's local copy of an instance that cannot be read (a torn write, a disk error) is not
trusted: the attach rebuilds it from storage and the journal. In-process, the hosts of
tests/integration/test_fencing.py over a real Redis and storage."""

from __future__ import annotations

import os

from regina import activation
from regina.vfs.sqlite_files import read_meta
from tests.integration import test_fencing
from tests.integration.test_fencing import Pair

pair = test_fencing.pair  # the two in-process hosts of test_fencing.py


def test_an_unreadable_local_copy_is_rebuilt_from_the_backup_and_the_journal(pair: Pair) -> None:
    # Given an instance backed up by a suspend on a (a's copy names that backup and is clean), then
    # run on b (that run only in the journal), b then taken for gone; a's copy is then damaged
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "hello", True)
    assert a.suspend(iid)["backedUp"]
    b.attach(iid, pair.move(iid, "b"))
    b.run_step(iid, pair.new_run(iid), "more", True)
    path = activation.local_path(a.settings, iid)
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)  # the SQLite header is gone: "file is not a database"

    # When the instance is resumed on a (a resume prefers the member that has its file)
    a.attach(iid, pair.move(iid, "a"))

    # Then a rebuilt its copy: the backup plus the run the journal holds
    assert [m["content"] for m in a.messages(iid)] == ["hello", "echo: hello", "more", "echo: more"]
    a.suspend(iid)
    assert os.path.exists(path) and read_meta(path)["backupKey"] == pair.store.get(iid).backup_key  # type: ignore[union-attr]
