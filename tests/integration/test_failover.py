"""A worker killed with -9: its instance moves to a live worker and the step it held is not lost."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def test_kill_9_mid_step_redelivers_the_step_on_another_worker(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given two workers with fs storage and an instance with a backed-up history
    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b"))
    w1, w2 = c.start_worker(wait=False), c.start_worker(wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=90)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    api.post(f"/instances/{iid}/chat", json={"message": "before"})
    api.post(f"/instances/{iid}/suspend")
    api.post(f"/instances/{iid}/resume")
    member = api.get(f"/instances/{iid}").json()["member"]
    victim = w1 if w1.member_id == member else w2
    fake_llm.push_for("during", Reply(text="never seen", delay=3.0), Reply(text="recovered"))

    # When its owner is killed with -9 while the step waits on the model
    with cf.ThreadPoolExecutor(1) as pool:
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
        fake_llm.wait_for_requests(2, timeout=15)  # "before" made one request; "during" waits on the second
        victim.kill()
        # Then the step is redelivered to the other worker and the client gets its answer
        try:
            resp = chat.result(60)
        except Exception:
            print(c.dump_logs())
            raise
    assert resp.status_code == 200 and resp.json()["text"] == "recovered"
    shown = api.get(f"/instances/{iid}").json()
    assert shown["member"] != victim.member_id and shown["epoch"] >= 3
    contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
    assert contents == ["before", "echo: before", "during", "recovered"]
    api.close()
