"""Starting points the failover and steering tests share."""

from __future__ import annotations

import httpx

from tests.harness.processes import Cluster, Proc


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
