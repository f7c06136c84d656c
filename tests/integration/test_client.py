"""The Python client against real web and worker processes."""

from __future__ import annotations

import httpx
import pytest

from regina.client import ReginaClient
from regina.errors import BadRequest, NotFound
from tests.harness.fake_llm import FakeLLM, Reply


def test_the_client_drives_an_instance_end_to_end(api: httpx.Client) -> None:
    with ReginaClient(str(api.base_url)) as regina:
        assert "openai-agent" in [a["id"] for a in regina.agents()]
        iid = regina.spawn("openai-agent")["instanceId"]
        assert regina.chat(iid, "hi")["text"] == "echo: hi"
        events = list(regina.stream(iid, "again"))
        assert events[-1]["type"] == "finish" and events[-1]["text"] == "echo: again"
        replay = list(regina.events(events[-1]["runId"], after=events[0]["seq"]))
        assert replay == events[1:]
        regina.steer(iid, "later")
        regina.heartbeat(iid)
        assert [m["content"] for m in regina.messages(iid)][:2] == ["hi", "echo: hi"]
        regina.suspend(iid)
        assert regina.instance(iid)["status"] == "suspended"
        regina.resume(iid)
        assert any(i["instanceId"] == iid for i in regina.instances())
        regina.delete(iid)
        with pytest.raises(NotFound):
            regina.instance(iid)
        with pytest.raises(BadRequest, match="message"):
            regina.chat(regina.spawn("openai-agent")["instanceId"], "")


def test_the_client_runs_cancel_keys_when_busy_and_typed_errors(api: httpx.Client, fake_llm: FakeLLM) -> None:
    import concurrent.futures as cf

    from regina import client as c

    with c.ReginaClient(str(api.base_url)) as regina:
        first = regina.spawn("openai-agent", idempotency_key="client-spawn")
        assert regina.spawn("openai-agent", idempotency_key="client-spawn") == first
        iid = first["instanceId"]
        answer = regina.chat(iid, "keyed", idempotency_key="k1")
        assert regina.chat(iid, "keyed", idempotency_key="k1") == answer and answer["finishReason"] == "stop"
        with pytest.raises(c.Unprocessable):
            regina.chat(iid, "other body", idempotency_key="k1")
        assert regina.run(answer["runId"])["status"] == "finished"
        assert regina.cancel(answer["runId"]) == {"cancelled": False, "status": "finished"}

        fake_llm.push(Reply(text="slow", delay=30))
        seen = len(fake_llm.requests)  # the keyed chat's request is one already
        with cf.ThreadPoolExecutor(1) as pool:
            events = pool.submit(lambda: list(regina.stream(iid, "long")))
            fake_llm.wait_for_requests(seen + 1, timeout=20)
            with pytest.raises(c.Conflict) as busy:
                regina.chat(iid, "now?", when_busy="reject")
            assert busy.value.run_id and busy.value.run_id in str(busy.value)
            assert regina.cancel(busy.value.run_id) == {"cancelled": True}
            assert events.result(timeout=60)[-1]["finishReason"] == "cancelled"
        assert regina.steer(iid, "noted")["steerId"].startswith("steer-")
        with pytest.raises(NotFound):
            regina.run("run-000000000000000000000000")
    with c.ReginaClient("http://127.0.0.1:9") as nowhere, pytest.raises(c.ConnectionFailed):
        nowhere.agents()


def test_the_async_client(api: httpx.Client) -> None:
    import asyncio

    from regina.client import AsyncReginaClient

    async def scenario() -> None:
        async with AsyncReginaClient(str(api.base_url)) as regina:
            iid = (await regina.spawn("openai-agent"))["instanceId"]
            answer = await regina.chat(iid, "async hi")
            assert answer["text"] == "echo: async hi"
            events = [e async for e in regina.stream(iid, "async stream")]
            assert events[-1]["type"] == "finish" and events[-1]["text"] == "echo: async stream"
            assert (await regina.run(events[-1]["runId"]))["status"] == "finished"
            await regina.delete(iid)

    asyncio.run(scenario())
