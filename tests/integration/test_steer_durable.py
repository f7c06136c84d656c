"""Steering survives a worker killed with -9 (SPEC §12): what a run took is taken again."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.scenarios import backed_up_instance

pytestmark = [pytest.mark.slow, pytest.mark.chaos]


def test_a_steer_taken_by_a_run_whose_worker_died_reaches_the_redelivered_run(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")).start(workers=2)
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        receipt = api.post(f"/instances/{iid}/steer", json={"message": "remember the blue door"}).json()
        fake_llm.push_for("during", Reply(text="never seen", delay=3.0), Reply(text="recovered"))
        with cf.ThreadPoolExecutor(1) as pool:
            chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
            fake_llm.wait_for_requests(2, timeout=15)  # the run took the steer and waits on the model
            victim.kill()
            resp = chat.result(60)
        assert resp.status_code == 200 and resp.json()["text"] == "recovered"
        contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert contents == ["before", "echo: before", "remember the blue door", "during", "recovered"]
        assert "remember the blue door" in fake_llm.requests[-1].all_text
        events = [line for line in api.get(f"/runs/{resp.json()['runId']}/events").text.splitlines() if line]
        # Told once: the message was in the transcript before its receipt went out, so the
        # redelivered step neither applied nor announced it again.
        assert sum(receipt["steerId"] in line and "steer-applied" in line for line in events) == 1, events


def test_a_steer_taken_after_the_answer_survives_the_worker_dying_in_the_next_model_call(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """The model answered, the run's finish took a steer that came meanwhile, and the worker died
    while the model answered the steer: the answer is durable, the steer is in the run's steering
    journal only. The redelivered step must answer the steer, not finish with the first answer."""
    c = make_cluster(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")).start(workers=2)
    with httpx.Client(base_url=c.web.url, timeout=90) as api:
        iid, victim, _ = backed_up_instance(c, api)
        fake_llm.push_for(
            "during",
            Reply(text="first answer", delay=1.0),
            Reply(text="never seen", delay=3.0),
            Reply(text="recovered"),
        )
        with cf.ThreadPoolExecutor(1) as pool:
            chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "during"})
            fake_llm.wait_for_requests(2, timeout=15)  # the first model call of "during"
            receipt = api.post(f"/instances/{iid}/steer", json={"message": "remember the blue door"}).json()
            fake_llm.wait_for_requests(3, timeout=15)  # the finish took the steer; the model answers it
            victim.kill()
            resp = chat.result(60)
        assert resp.status_code == 200 and resp.json()["text"] == "recovered", resp.text
        contents = [m["content"] for m in api.get(f"/instances/{iid}/messages").json()]
        assert contents == ["before", "echo: before", "during", "first answer", "remember the blue door", "recovered"]
        events = [line for line in api.get(f"/runs/{resp.json()['runId']}/events").text.splitlines() if line]
        # Told once: the message was in the transcript before its receipt went out, so the
        # redelivered step neither applied nor announced it again.
        assert sum(receipt["steerId"] in line and "steer-applied" in line for line in events) == 1, events
