"""A command the worker is still carrying out is not reported as failed."""

from __future__ import annotations

import concurrent.futures as cf

import httpx

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn


def test_a_suspend_slower_than_the_reply_timeout_is_accepted_not_failed(
    make_cluster: object, fake_llm: FakeLLM
) -> None:
    c: Cluster = make_cluster(REGINA_LIMITS__WORKER_REPLY_TIMEOUT="1")  # type: ignore[operator]
    c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as api, cf.ThreadPoolExecutor(1) as pool:
        iid = spawn(api)
        fake_llm.push(Reply(text="slow answer", delay=4))
        chat = pool.submit(api.post, f"/instances/{iid}/chat", json={"message": "take your time"})
        wait_until(lambda: any(r.last_user_text == "take your time" for r in fake_llm.requests), 10)
        # The suspend waits for the running step (4 s): longer than the 1 s reply timeout.
        resp = api.post(f"/instances/{iid}/suspend")
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"instanceId": iid, "status": "suspending"}
        answer = chat.result()
        assert answer.json().get("text") == "slow answer", answer.text
        wait_until(lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", 20)
