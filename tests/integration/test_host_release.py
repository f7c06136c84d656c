"""How a worker lets go of an instance when things go wrong around it: a suspend whose last
write fails, a delete racing a suspend, a spawn its coordinator gave up on. In-process, over a
real Redis (the hosts of tests/integration/test_fencing.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import redis

from regina import activation, keys
from regina.errors import StaleEpoch
from regina.ids import new_instance_id
from tests.harness.waiting import wait_until
from tests.integration import test_fencing
from tests.integration.test_fencing import Pair

pair = test_fencing.pair  # the two in-process hosts of test_fencing.py


def test_a_suspend_whose_last_write_fails_for_a_moment_still_marks_the_instance_suspended(pair: Pair) -> None:
    """The backup was stored and the instance closed, then `status: suspended` failed once (Redis
    restarting): the record stayed `suspending` on a live member that no longer held it, and every
    chat or resume of it answered 503 until that worker restarted."""
    host = pair.hosts["a"]
    iid = pair.spawn()
    real = host.store.fenced_set
    failures = []

    def flaky(instance_id: str, epoch: int, **fields: Any) -> bool:
        if fields.get("status") == "suspended" and len(failures) < 2:
            failures.append(fields)
            raise redis.ConnectionError("Redis restarting")
        return real(instance_id, epoch, **fields)

    host.store.fenced_set = flaky  # type: ignore[method-assign]

    answer = host.suspend(iid)

    assert answer["backedUp"] and len(failures) == 2
    rec = pair.store.get(iid)
    assert rec is not None and rec.status == "suspended" and rec.backup_version == 1
    assert iid not in host.active


def test_a_delete_while_a_suspend_backs_up_counts_the_instance_off_once(pair: Pair) -> None:
    """The delete took the instance while the suspend held its lock; both took one off the
    member's instance count (it went negative)."""
    host = pair.hosts["a"]
    iid = pair.spawn()
    counter = keys.member_instances(host.member_id)
    assert int(pair.r.get(counter) or 0) == 1
    assert host.backups is not None
    storage = host.backups.storage
    real_put = storage.put
    storing = threading.Event()

    def slow_put(key: str, data: bytes) -> None:
        storing.set()
        time.sleep(0.5)
        real_put(key, data)

    storage.put = slow_put  # type: ignore[method-assign]
    suspend = threading.Thread(target=host.suspend, args=(iid,))
    suspend.start()
    assert storing.wait(5)
    host.delete(iid)
    suspend.join(10)

    assert int(pair.r.get(counter) or 0) == 0
    assert iid not in host.active


def test_a_spawn_its_coordinator_gave_up_on_leaves_no_local_copy(pair: Pair) -> None:
    """The coordinator waited workerReplyTimeout for the attach, then deleted the record; the
    worker's late attach made the instance's file and then found the record gone: the file stayed."""
    host = pair.hosts["a"]
    iid = new_instance_id("openai-agent")  # its record: created, then deleted by the coordinator

    with pytest.raises(StaleEpoch):
        host.attach(iid, 1, new_of="openai-agent")

    assert iid not in host.active
    assert not os.path.exists(activation.local_path(host.settings, iid))


def test_an_instance_deleted_while_attached_loses_its_local_copy_when_let_go_of(pair: Pair) -> None:
    """The record went while the instance was held here (a delete whose removal ran before the
    copy was written): letting go of it (the heartbeat's release) removes the copy."""
    host = pair.hosts["a"]
    iid = pair.spawn()
    path = activation.local_path(host.settings, iid)
    assert os.path.exists(path)
    rec = pair.store.get(iid)
    assert rec is not None
    pair.store.delete(iid, rec.definition_id)

    wait_until(lambda: host.release(iid)["released"], timeout=5, what="the release")

    assert not os.path.exists(path)


def test_an_instance_that_moved_leaves_no_copy_on_the_worker_that_lets_go_of_it(pair: Pair) -> None:
    """A worker taken for dead (a pause, a partition) lets go of the instances that moved
    meanwhile at its next heartbeat; their local copies (the old conversation) stayed on its disk
    for as long as it ran."""
    # Given an instance that chatted on a, then moved to b
    a, b = pair.hosts["a"], pair.hosts["b"]
    iid = pair.spawn()
    a.run_step(iid, pair.new_run(iid), "a secret", True)
    b.attach(iid, pair.move(iid, "b"))
    path = activation.local_path(a.settings, iid)
    assert os.path.exists(path)

    # When a's heartbeat finds it stale and releases it
    assert a.stale_instances() == [(iid, 1)]
    assert a.release(iid, 1) == {"released": True}

    # Then a's copy is gone, and b goes on with the whole conversation
    assert not [p for p in os.listdir(a.settings.vfs_dir) if p.startswith(iid)]
    b.run_step(iid, pair.new_run(iid), "more", True)
    assert [m["content"] for m in b.messages(iid)][-4:] == ["a secret", "echo: a secret", "more", "echo: more"]


def test_back_from_being_taken_for_dead_a_worker_removes_the_copies_nobody_may_use(pair: Pair) -> None:
    """What a worker's start removes, a worker that comes back while running removes too: the
    copies of instances resumed elsewhere or deleted while it was taken for dead. Its copies of
    instances it still owns stay (a resume here uses them as they are), and so do those of the
    instances it still holds (each goes with its release)."""
    # Given four instances that chatted on a; three of them suspended there
    a, b = pair.hosts["a"], pair.hosts["b"]
    moved, kept, deleted, held = (pair.spawn() for _ in range(4))
    for iid in (moved, kept, deleted, held):
        a.run_step(iid, pair.new_run(iid), f"hello {iid}", True)
    for iid in (moved, kept, deleted):
        assert a.suspend(iid)["backedUp"]

    # While a was taken for dead: one resumed on b, one deleted, the attached one moved to b
    b.attach(moved, pair.move(moved, "b"))
    rec = pair.store.get(deleted)
    assert rec is not None
    pair.store.delete(deleted, rec.definition_id)
    b.attach(held, pair.move(held, "b"))

    # When a is back and removes the stale copies
    assert a.remove_stale_copies() == 2

    # Then the moved and deleted instances' copies are gone, the others stay
    def copy(iid: str) -> bool:
        return os.path.exists(activation.local_path(a.settings, iid))

    assert (copy(moved), copy(deleted), copy(kept), copy(held)) == (False, False, True, True)
    # the held one goes with its release
    assert a.release(held, 1) == {"released": True}
    assert not copy(held)
    # and the one a still owns resumes from its copy, without a download
    assert a.attach(kept, pair.move(kept, "a")) == {"restored": False}
    assert [m["content"] for m in a.messages(kept)][-1] == f"echo: hello {kept}"
