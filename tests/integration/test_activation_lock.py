"""The activation lock: one placer at a time, a clear 503 for the one that waits too long, and a
release that never removes a lock someone else holds now (redis-py's token-checked Lock)."""

from __future__ import annotations

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
    settings = Settings(redis=redis_server.url, agents_dir=AGENTS, limits=Limits(worker_reply_timeout=0.3))
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
