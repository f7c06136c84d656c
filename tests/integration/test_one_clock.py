"""Every idle timer runs on Redis's clock: a web or worker whose own clock is off does not skew it."""

from __future__ import annotations

import time

import pytest

from regina.instances import InstanceStore
from regina.redis_conn import connect
from tests.harness.redis_server import RedisServer

SKEW = 3600.0  # this process's clock runs an hour ahead of the cluster's


@pytest.fixture
def store(redis_server: RedisServer) -> InstanceStore:
    return InstanceStore(connect(redis_server.url))


def _redis_now(store: InstanceStore) -> float:
    sec, usec = store.r.time()
    return sec + usec / 1e6


def test_last_active_is_written_with_redis_time(store: InstanceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)
    iid = f"openai-agent-{int(real() * 1e6):024x}"[-37:]
    rec = store.create(iid, "openai-agent", "nobody")
    try:
        for touched in (lambda: None, lambda: store.touch(iid), lambda: store.touch_and_check(iid)):
            touched()
            last = store.get(iid).last_active  # type: ignore[union-attr]
            assert abs(last - _redis_now(store)) < 5, (
                f"lastActive {last} is off Redis time by {last - _redis_now(store):.0f}s"
            )
        assert abs(store.now() - _redis_now(store)) < 5
        assert abs(rec.created_at - _redis_now(store)) < 5
    finally:
        store.delete(iid, "openai-agent")
