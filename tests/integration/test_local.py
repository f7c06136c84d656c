"""Python code beside the workers submits to Celery directly (no HTTP in between)."""

from __future__ import annotations

import redis

from regina import keys
from regina.config import Settings
from tests.harness.processes import ROOT, Cluster
from tests.harness.redis_server import RedisServer
from workers.celery_app import app
from workers.local import local_coordinator, use_broker


def test_local_coordinator_spawns_chats_and_streams(cluster: Cluster) -> None:
    regina = local_coordinator(Settings(redis=cluster.redis_url, agents_dir=str(ROOT / "tests" / "agents")))
    iid = regina.spawn("openai-agent").instance_id
    assert regina.chat(iid, "beside the workers")["text"] == "echo: beside the workers"
    events = list(regina.follow_run(regina.start_run(iid, "streamed")))
    assert events[-1]["type"] == "finish" and events[-1]["text"] == "echo: streamed"
    assert [m["content"] for m in regina.messages(iid)][-2:] == ["streamed", "echo: streamed"]
    regina.delete(iid)


def test_a_second_local_coordinator_publishes_to_its_own_broker() -> None:
    """Celery's pools are made at first use: the second coordinator's commands went to the first's Redis."""
    agents = str(ROOT / "tests" / "agents")
    before = str(app.conf.broker_url)
    try:
        with RedisServer() as first, RedisServer() as second:
            local_coordinator(Settings(redis=first.url, agents_dir=agents)).dispatcher.send_command("m", "x", {}, "1")
            local_coordinator(Settings(redis=second.url, agents_dir=agents)).dispatcher.send_command("m", "x", {}, "2")
            for server in (first, second):
                with redis.Redis.from_url(server.url) as r:
                    assert r.llen(keys.member_queue("m")) == 1, server.url
    finally:
        use_broker(before)  # the process's app as the tests after this one found it
