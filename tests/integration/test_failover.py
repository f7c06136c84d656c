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


def test_the_orphan_sweep_reruns_a_step_nobody_waits_for(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM
) -> None:
    # Given an instance whose step is running on w1 and whose client has gone away
    c = make_cluster()
    w1 = c.start_worker(wait=False)
    w2 = c.start_worker(wait=False)
    c.wait_worker(w1)
    c.wait_worker(w2)
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=30)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    member = api.get(f"/instances/{iid}").json()["member"]
    victim, survivor = (w1, w2) if w1.member_id == member else (w2, w1)
    fake_llm.push_for("unwatched", Reply(text="lost", delay=3.0), Reply(text="done anyway"))
    with pytest.raises(httpx.ReadTimeout):
        api.post(f"/instances/{iid}/chat", json={"message": "unwatched"}, timeout=1.0)
    fake_llm.wait_for_requests(1, timeout=10)

    # When its worker is killed with -9
    victim.kill()

    # Then a sweep on the surviving worker re-homes it and the step runs to its end
    fake_llm.wait_for_requests(2, timeout=30)
    from tests.harness.waiting import wait_until

    wait_until(
        lambda: [m["content"] for m in api.get(f"/instances/{iid}/messages").json()] == ["unwatched", "done anyway"],
        timeout=30,
        what="the redelivered step to finish",
    )
    assert api.get(f"/instances/{iid}").json()["member"] == survivor.member_id
    api.close()
