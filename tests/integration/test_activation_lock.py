"""The activation lock: one placer at a time, a clear 503 for the one that waits too long, and a
release that never removes a lock someone else holds now (redis-py's token-checked Lock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

from regina import keys
from regina.config import Limits, Settings
from regina.errors import Unavailable
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry

AGENTS = str(Path(__file__).resolve().parents[1] / "agents")
IID = "openai-agent-00000000000000000000a11c"


def _coordinator(redis_server: Any) -> Coordinator:
    settings = Settings(
        redis=redis_server.url, agents_dir=AGENTS, limits=Limits(worker_reply_timeout=0.3, placement_wait=0.5)
    )
    client = connect(settings.redis)
    return Coordinator(settings, AgentRegistry(settings), client, cast(Any, None), None)


def test_a_second_placer_waits_then_gets_503(redis_server: Any) -> None:
    first, second = _coordinator(redis_server), _coordinator(redis_server)
    with first._activation_lock(IID):
        with pytest.raises(Unavailable, match="busy being placed"):
            with second._activation_lock(IID):
                pass
    with second._activation_lock(IID):  # released: the next placer gets it at once
        assert second.r.exists(keys.activation_lock(IID))
    assert not second.r.exists(keys.activation_lock(IID))


def test_an_expired_holder_leaves_the_next_holders_lock_alone(redis_server: Any) -> None:
    coordinator = _coordinator(redis_server)
    key = keys.activation_lock(IID)
    with coordinator._activation_lock(IID):
        coordinator.r.delete(key)  # our lock expired (a long pause) ...
        coordinator.r.set(key, "someone-else", px=5000)  # ... and another placer took it
    assert coordinator.r.get(key) == "someone-else"
    coordinator.r.delete(key)


def test_a_live_holder_keeps_the_lock_past_its_lease(redis_server: Any) -> None:
    holder, other = _coordinator(redis_server), _coordinator(redis_server)
    holder.locks.lease = 0.3
    with holder._activation_lock(IID):
        time.sleep(1.0)  # more than three leases: renewed meanwhile
        with pytest.raises(Unavailable, match="busy being placed"):
            with other.locks.held(IID, wait=0.2):
                pass
    assert not holder.r.exists(keys.activation_lock(IID))


_HOLD_AND_HANG = """
import sys, time
from regina.activation_lock import ActivationLock
from regina.redis_conn import connect
lock = ActivationLock(connect(sys.argv[1]), lease=1.0)
with lock.held(sys.argv[2], wait=90):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_holder_killed_with_9_blocks_the_instance_for_one_lease_not_the_whole_wait(redis_server: Any) -> None:
    # Given a placer process holding the lock (1 s lease) for a placement that may take 90 s
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_HANG, redis_server.url, IID], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        # When it is killed with -9 (no release)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Then the next placer gets the lock once the lease lapses, not after the 90 s wait
        t0 = time.monotonic()
        with _coordinator(redis_server).locks.held(IID, wait=10):
            took = time.monotonic() - t0
        assert took < 2.0, took
    finally:
        proc.kill()
        proc.wait()
