"""Python code beside the workers submits to Celery directly (no HTTP in between)."""

from __future__ import annotations

from regina.config import Settings
from tests.harness.processes import ROOT, Cluster
from workers.local import local_coordinator


def test_local_coordinator_spawns_chats_and_streams(cluster: Cluster) -> None:
    regina = local_coordinator(Settings(redis=cluster.redis_url, agents_dir=str(ROOT / "tests" / "agents")))
    iid = regina.spawn("openai-agent").instance_id
    assert regina.chat(iid, "beside the workers")["text"] == "echo: beside the workers"
    events = list(regina.follow_run(regina.start_run(iid, "streamed")))
    assert events[-1]["type"] == "finish" and events[-1]["text"] == "echo: streamed"
    assert [m["content"] for m in regina.messages(iid)][-2:] == ["streamed", "echo: streamed"]
    regina.delete(iid)
