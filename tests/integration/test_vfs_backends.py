"""Every VFS backend round-trips suspend → resume → another worker, with history and files intact."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.integration.test_api import spawn

pytestmark = pytest.mark.slow


def _tool_result(fake: FakeLLM) -> str:
    return [m["content"] for m in fake.requests[-1].messages if m["role"] == "tool"][-1]


def _read_note(api: httpx.Client, fake: FakeLLM, iid: str, ask: str) -> str:
    fake.push(Reply(tool_calls=[ToolCall("read_file", {"path": "/notes/a.txt"})]), Reply(text="read"))
    resp = api.post(f"/instances/{iid}/chat", json={"message": ask})
    assert resp.status_code == 200, resp.text
    return _tool_result(fake)


@pytest.mark.parametrize("backend", ["sqlite", "memory", "realdir"])
def test_suspend_resume_and_move_keep_history_and_files(make_cluster: object, fake_llm: FakeLLM, backend: str) -> None:
    c: Cluster = make_cluster(REGINA_VFS_BACKEND=backend, REGINA_STORAGE__TYPE="redis")  # type: ignore[operator]
    w1 = c.start_worker(env={"REGINA_FS_ROOT_PATH": str(c.tmp / "root-w1")})
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api:
        iid = spawn(api)
        fake_llm.push(
            Reply(tool_calls=[ToolCall("write_file", {"path": "/notes/a.txt", "content": "kept"})]), Reply(text="ok")
        )
        assert api.post(f"/instances/{iid}/chat", json={"message": "save a note"}).status_code == 200

        # Suspend and resume on the same worker.
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        assert api.post(f"/instances/{iid}/resume").status_code == 204
        assert _read_note(api, fake_llm, iid, "after resume") == "kept"

        # Move to another worker (its own disk): the first one shuts down, backing up.
        assert api.post(f"/instances/{iid}/suspend").status_code == 204
        w1.stop()
        c.start_worker(env={"REGINA_FS_ROOT_PATH": str(c.tmp / "root-w2")})
        assert _read_note(api, fake_llm, iid, "after the move") == "kept"
        users = [m["content"] for m in api.get(f"/instances/{iid}/messages").json() if m["role"] == "user"]
        assert users == ["save a note", "after resume", "after the move"], json.dumps(users)
