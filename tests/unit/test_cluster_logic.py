"""Pure cluster logic: placement choices, ids, keys and the FIFO lock."""

from __future__ import annotations

import threading
import time

import pytest

from regina import keys
from regina.cluster.placement import choose
from regina.errors import Unavailable
from regina.fifo_lock import FifoLock
from regina.ids import is_valid_instance_id, new_instance_id, new_run_id


def test_round_robin_cycles_through_members_in_a_stable_order() -> None:
    members = {"b": 0, "a": 5, "c": 1}
    assert [choose(members, "round-robin", i) for i in range(1, 7)] == ["b", "c", "a", "b", "c", "a"]


def test_least_loaded_picks_the_member_with_fewest_instances() -> None:
    assert choose({"a": 3, "b": 1, "c": 2}, "least-loaded") == "b"
    assert choose({"a": 1, "b": 1}, "least-loaded") == "a"  # ties: stable order


def test_random_picks_a_live_member() -> None:
    picks = {choose({"a": 0, "b": 0}, "random") for _ in range(200)}
    assert picks == {"a", "b"}


def test_no_live_member_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="no live worker"):
        choose({}, "round-robin")


def test_instance_ids_are_prefixed_unguessable_and_checked() -> None:
    a, b = new_instance_id("support-agent"), new_instance_id("support-agent")
    assert a != b and a.startswith("support-agent-") and len(a.rsplit("-", 1)[1]) == 24  # 96 bits
    assert is_valid_instance_id(a)
    assert not is_valid_instance_id("../etc/passwd") and not is_valid_instance_id("x")
    assert new_run_id().startswith("run-")


def test_seed_keys_keep_their_names() -> None:
    assert keys.MEMBERS == "regina:members"
    assert keys.member("m1") == "regina:member:m1"
    assert keys.member_instances("m1") == "regina:member:m1:instances"
    assert keys.instance_owner("i1") == "regina:instance:i1"
    assert keys.instance_queue("i1") == "regina.i.i1"


def test_fifo_lock_serves_waiters_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[int] = []
    lock.acquire()

    def worker(n: int) -> None:
        with lock:
            order.append(n)

    threads = []
    assert lock.waiting == 0
    for n in range(5):
        t = threading.Thread(target=worker, args=(n,))
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while lock.waiting != n + 1 and time.monotonic() < deadline:  # arrived: the order is set
            time.sleep(0.001)
        assert lock.waiting == n + 1
    assert lock.busy
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.busy
