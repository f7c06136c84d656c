"""A restarted worker continues conversations from the VFS session file; factory hooks run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import ROOT, Cluster

pytestmark = pytest.mark.slow


def test_a_restarted_worker_sends_the_whole_earlier_conversation(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    log = tmp_path / "factory.log"
    c = make_cluster(
        REGINA_FACTORY=str(ROOT / "tests" / "factories" / "recording_factory.py"),
        TEST_FACTORY_LOG=str(log),
    )
    env = {"REGINA_VFS_DIR": str(tmp_path / "vfs")}
    worker = c.start_worker(member_id="steady@test", env=env)
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/a.txt", "content": "A"})]), Reply(text="first done")
    )
    api.post(f"/instances/{iid}/chat", json={"message": "first"})

    # When the worker restarts (same member id and disk, no storage configured)
    assert worker.stop() == 0
    c.start_worker(member_id="steady@test", env=env)
    assert api.post(f"/instances/{iid}/chat", json={"message": "second"}).json()["text"] == "echo: second"

    # Then the model got the whole conversation, tool call and tool result included
    sent = fake_llm.requests[-1].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["name"] == "write_file"
    assert sent[3]["content"] == "wrote 1 bytes to /a.txt"
    prepared = [json.loads(line) for line in log.read_text().splitlines()]
    assert [p["event"] for p in prepared] == ["prepare", "prepare"]  # spawn, then the resume
    assert all(p["instanceId"] == iid and p["definition"] == "openai-agent" for p in prepared)
    api.close()


def test_a_reload_reaches_every_web_and_worker_process(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "one.md").write_text("---\nname: one\nmodel: gpt-4o\n---\nYou are one.\n")
    c = make_cluster(REGINA_AGENTS_DIR=str(agents))
    c.start_worker()
    web1, web2 = c.start_web(), c.start_web()
    a, b = httpx.Client(base_url=web1.url, timeout=60), httpx.Client(base_url=web2.url, timeout=60)
    assert [x["id"] for x in b.get("/agents").json()] == ["one"]

    # When a definition is added and one web process is asked to reload
    (agents / "two.md").write_text("---\nname: two\nmodel: gpt-4o\n---\nYou are two.\n")
    (agents / "broken.md").write_text("---\nname: [unclosed\n---\n")
    reloaded = a.post("/admin/agents/reload").json()
    assert reloaded["agents"] == ["one", "two"] and "broken.md" in json.dumps(reloaded["errors"])

    # Then the other web process and the worker know it too
    from tests.harness.waiting import wait_until

    wait_until(lambda: [x["id"] for x in b.get("/agents").json()] == ["one", "two"], timeout=10)
    iid = b.post("/agents/two/instances").json()["instanceId"]
    assert b.post(f"/instances/{iid}/chat", json={"message": "hi two"}).json()["text"] == "echo: hi two"
    a.close()
    b.close()


def test_a_worker_killed_and_restarted_under_the_same_member_id_serves_its_instances_again(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """A pod that keeps its host name: the records still name the member, the new process held nothing."""
    c = make_cluster()
    env = {"REGINA_VFS_DIR": str(tmp_path / "vfs")}
    worker = c.start_worker(member_id="pod-0@test", env=env)
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "before the crash"})

    worker.kill()
    c.start_worker(member_id="pod-0@test", env=env)

    resp = api.post(f"/instances/{iid}/chat", json={"message": "after"}, timeout=30)
    assert resp.json().get("text") == "echo: after", (resp.status_code, resp.text, c.dump_logs()[-3000:])
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["before the crash", "echo: before the crash", "after", "echo: after"]
    api.close()
