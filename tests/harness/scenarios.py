"""Starting points the failover and steering tests share."""

from __future__ import annotations

import httpx

from regina.config import Limits
from regina.runtime.tools.toolset import build_tools
from regina.vfs import MemoryVFS
from tests.harness.processes import Cluster, Proc


def builtin_schema_tokens() -> int:
    """The tokens the loop estimates for the built-in tools' schemas (characters / 4): every
    model call's prompt estimate includes them, as providers count them, so a test's token
    budget leaves them room."""
    tools = build_tools(MemoryVFS(), env={}, limits=Limits(), network=False, user_tools={})
    return sum(t.schema_chars() for t in tools.values()) // 4


def backed_up_instance(c: Cluster, api: httpx.Client) -> tuple[str, Proc, Proc]:
    """An instance of a two-worker cluster chatted once ("before"), suspended (its backup in
    storage) and resumed: (its id, the worker holding it, the other worker)."""
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "before"})
    api.post(f"/instances/{iid}/suspend")
    api.post(f"/instances/{iid}/resume")
    member = api.get(f"/instances/{iid}").json()["member"]
    w1, w2 = c.workers
    return (iid, w1, w2) if w1.member_id == member else (iid, w2, w1)
