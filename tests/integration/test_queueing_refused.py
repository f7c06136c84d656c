"""A run the web recorded but could not queue (the broker refused the publish, Redis failed
mid-way, a timeout) ends with the reason: it does not stay `queued`, hold its instance busy, or
answer its Idempotency-Key's retries. A real Redis; the broker's refusal is injected at the
Dispatcher's publish, the adapter boundary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from api import create_app
from api.services import Services
from regina import ids, keys
from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.registry_sync import RegistryFollower
from tests.harness.redis_server import RedisServer
from workers.celery_app import app as celery_app
from workers.dispatcher import CeleryDispatcher

AGENTS = str(Path(__file__).resolve().parents[1] / "agents")


class _BrokerDown(CeleryDispatcher):
    """Publishes nothing: the step goes through `enqueue_step` (as off the Redis transport), which fails."""

    def step_message(self, *args: Any, **kwargs: Any) -> str | None:
        return None

    def enqueue_step(self, *args: Any, **kwargs: Any) -> None:
        raise OperationalError("[Errno 111] Connection refused")


def test_a_run_that_could_not_be_queued_ends_and_frees_its_key(redis_server: RedisServer) -> None:
    settings = Settings(redis=redis_server.url, agents_dir=AGENTS)
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    coordinator = Coordinator(settings, registry, client, _BrokerDown(celery_app, client), None)
    web = create_app(settings, Services(settings, registry, client, coordinator, RegistryFollower(client, registry)))
    api = web.test_client()
    direct = redis.Redis.from_url(redis_server.url, decode_responses=True)
    iid, member = ids.new_instance_id("openai-agent"), f"refused-{ids.new_token()}"
    # Started on a live member: the web queues the step itself, and the publish fails.
    direct.hset(keys.instance_record(iid), mapping={"status": "started", "epoch": "1", "member": member})
    direct.set(keys.member(member), "127.0.0.1", ex=60)
    try:
        for attempt in range(2):
            resp = api.post(f"/instances/{iid}/chat", json={"message": "hi"}, headers={"Idempotency-Key": "k-1"})
            assert resp.status_code == 503 and "message broker is unreachable" in resp.json["error"], resp.text
            runs = [  # this instance's: the Redis server is shared with other tests
                k
                for k in direct.scan_iter("regina:run:run-*")
                if k.count(":") == 2 and direct.hget(k, "instanceId") == iid
            ]
            assert len(runs) == attempt + 1  # the retry made a run of its own: the key was let go
            for key in runs:
                rec = direct.hgetall(key)
                assert rec["status"] == "failed", rec
                last = direct.xrevrange(f"{key}:events", count=1)[0][1]["e"]
                assert json.loads(last)["type"] == "error" and "could not be queued" in json.loads(last)["error"]
            assert direct.zcard(keys.instance_runs(iid)) == 0  # nothing holds the instance busy
        resp = api.post(f"/instances/{iid}/chat", json={"message": "hi", "whenBusy": "reject"})
        assert resp.status_code != 409, resp.text  # not "busy with" a run that never ran
    finally:
        direct.delete(keys.instance_record(iid), keys.member(member))
        client.close()
        direct.close()
