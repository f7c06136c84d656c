"""The Python client against real web and worker processes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from regina.client import ConnectionFailed, ReginaClient
from regina.errors import BadRequest, NotFound
from tests.harness.cutting_proxy import CuttingProxy
from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.processes import Cluster


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
        assert any(i["instanceId"] == iid for i in regina.fleet())  # every page: the shared cluster has many
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
            # The rest of the sync client's calls
            assert "openai-agent" in [a["id"] for a in await regina.agents()]
            await regina.heartbeat(iid)
            assert [m["content"] for m in await regina.messages(iid)][:2] == ["async hi", "echo: async hi"]
            await regina.suspend(iid)
            assert (await regina.instance(iid))["status"] == "suspended"
            await regina.resume(iid)
            assert (await regina.instance(iid))["status"] == "started"
            assert iid in [i["instanceId"] for i in await regina.instances("openai-agent")]
            assert iid in [i["instanceId"] async for i in regina.fleet(agent="openai-agent")]
            assert "openai-agent" in (await regina.reload())["agents"]
            await regina.delete(iid)

    asyncio.run(scenario())


def test_requests_wait_longer_than_the_servers_request_timeout_and_streams_without_limit() -> None:
    """A sync chat's 202 comes after the server's default requestTimeout (600 s): the client's
    read timeout must not fire first; connecting stays quick."""
    from regina.client import AsyncReginaClient

    for client in (ReginaClient("http://127.0.0.1:9"), AsyncReginaClient("http://127.0.0.1:9")):
        timeout = client._http.timeout
        assert timeout.read is None or timeout.read > 600, timeout
        assert timeout.connect is not None and timeout.connect <= 30, timeout


def test_fleet_walks_every_page_with_member_and_last_active(api: httpx.Client) -> None:
    import asyncio

    from regina.client import AsyncReginaClient

    with ReginaClient(str(api.base_url)) as regina:
        mine = {regina.spawn("helper-agent")["instanceId"] for _ in range(5)}
        try:
            listed = list(regina.fleet(agent="helper-agent", limit=2))  # pages of 2: three or more pages
            ids = [i["instanceId"] for i in listed]
            assert len(ids) == len(set(ids)) and mine <= set(ids)
            assert all(i["definitionId"] == "helper-agent" and i["member"] and i["lastActive"] for i in listed)
            assert mine <= {i["instanceId"] for i in regina.fleet(limit=3)}
            assert len(regina.instances(limit=2)) == 2  # instances() is still one page

            async def walk() -> set[str]:
                async with AsyncReginaClient(str(api.base_url)) as aregina:
                    return {i["instanceId"] async for i in aregina.fleet(agent="helper-agent", limit=2)}

            assert mine <= asyncio.run(walk())
        finally:
            for iid in mine:
                regina.delete(iid)


def test_a_sync_chat_answered_202_is_followed_to_its_answer(cluster: Cluster, fake_llm: FakeLLM) -> None:
    """A web whose sync chats wait 1 s answers 202 for a 3 s model call; both clients follow the
    run's events and return the answer as a 200 would have."""
    import asyncio

    from regina import client as c
    from regina.client import AsyncReginaClient

    web = cluster.start_web(env={"REGINA_LIMITS__REQUEST_TIMEOUT": "1"})
    try:
        with ReginaClient(web.url) as regina:
            iid = regina.spawn("openai-agent")["instanceId"]
            fake_llm.push(Reply(text="worth the wait", delay=3))
            answer = regina.chat(iid, "slow")
            assert answer["text"] == "worth the wait" and answer["finishReason"] == "stop", answer
            assert set(answer) == {"text", "usage", "runId", "finishReason"}
            assert answer["usage"]["completionTokens"] > 0
            assert regina.run(answer["runId"])["status"] == "finished"

            async def scenario() -> dict[str, Any]:
                async with AsyncReginaClient(web.url) as aregina:
                    fake_llm.push(Reply(text="async wait", delay=3))
                    return await aregina.chat(iid, "slow async")

            late = asyncio.run(scenario())
            assert late["text"] == "async wait" and late["runId"] != answer["runId"], late

            # A followed run that ends with an `error` event raises
            fake_llm.push(Reply(error_status=401, error_message="bad key", delay=3))
            with pytest.raises(c.RunFailed, match="bad key") as failed:
                regina.chat(iid, "fails late")
            assert failed.value.body["type"] == "error"
            regina.delete(iid)
    finally:
        web.stop()
        cluster.procs.remove(web)


def _check_whole_run(events: list[dict[str, Any]], text: str, api: httpx.Client) -> None:
    """The events of one run, each once and in order, as the run's own replay has them."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert events[-1]["type"] == "finish" and events[-1]["text"] == text, events[-1]
    assert "".join(e.get("textDelta", "") for e in events) == text
    with api.stream("GET", f"/runs/{events[-1]['runId']}/events") as r:
        replay = [json.loads(line) for line in r.iter_lines() if line]
    assert events == replay


def test_a_dropped_stream_re_attaches_after_its_last_seq(api: httpx.Client, fake_llm: FakeLLM) -> None:
    import asyncio

    from regina.client import AsyncReginaClient

    text = "one two three four five six seven eight nine ten"
    port = int(str(api.base_url).rsplit(":", 1)[1].strip("/"))
    with CuttingProxy("127.0.0.1", port) as proxy, ReginaClient(proxy.url) as regina:
        iid = regina.spawn("openai-agent")["instanceId"]
        # Given a stream whose connection is cut after its second text delta
        fake_llm.push(Reply(text=text, chunk_delay=0.15))
        proxy.cut_after(b'"text-delta"', 2)
        before = proxy.connections
        # Then the client re-attaches at the last seq and yields the rest: no gap, no repeat
        events = list(regina.stream(iid, "count"))
        assert proxy.cut.is_set() and proxy.connections > before
        _check_whole_run(events, text, api)

        # And so does events(), and the async client's stream
        fake_llm.push(Reply(text=text, chunk_delay=0.15))
        with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "again"}) as started:
            run_id = started.headers["X-Run-Id"]  # the run goes on without this connection
        proxy.cut_after(b'"text-delta"', 1)
        replayed = list(regina.events(run_id))
        assert proxy.cut.is_set()
        _check_whole_run(replayed, text, api)

        async def scenario() -> list[dict[str, Any]]:
            async with AsyncReginaClient(proxy.url) as aregina:
                return [e async for e in aregina.stream(iid, "async count")]

        fake_llm.push(Reply(text=text, chunk_delay=0.15))
        proxy.cut_after(b'"text-delta"', 3)
        async_events = asyncio.run(scenario())
        assert proxy.cut.is_set()
        _check_whole_run(async_events, text, api)

        # And a server that stays unreachable ends the stream with ConnectionFailed
        fake_llm.push(Reply(text=text, chunk_delay=0.15))
        proxy.cut_after(b'"text-delta"', 1, refuse_after_cut=True)
        stream = regina.stream(iid, "cut for good")
        with pytest.raises(ConnectionFailed, match="re-attached"):
            for _ in stream:
                pass
        assert stream.run_id is not None
        api.post(f"/runs/{stream.run_id}/cancel")


def test_instances_of_a_definition_take_the_fleet_filters(api: httpx.Client) -> None:
    import asyncio

    from regina.client import AsyncReginaClient

    with ReginaClient(str(api.base_url)) as regina:
        kept, parked = (regina.spawn("helper-agent")["instanceId"] for _ in range(2))
        try:
            regina.suspend(parked)
            everyone = {i["instanceId"] for i in regina.instances("helper-agent")}
            assert {kept, parked} <= everyone
            suspended = regina.instances("helper-agent", status="suspended", limit=1000)
            assert parked in {i["instanceId"] for i in suspended} and kept not in {i["instanceId"] for i in suspended}
            assert all(i["definitionId"] == "helper-agent" and i["status"] == "suspended" for i in suspended)
            assert len(regina.instances("helper-agent", limit=1)) == 1
            with pytest.raises(TypeError, match="unknown instance filter"):
                regina.instances("helper-agent", state="suspended")

            async def walk() -> list[dict[str, Any]]:
                async with AsyncReginaClient(str(api.base_url)) as aregina:
                    return await aregina.instances("helper-agent", status="started", limit=1000)

            started = {i["instanceId"] for i in asyncio.run(walk())}
            assert kept in started and parked not in started
        finally:
            regina.delete(kept)
            regina.delete(parked)


#: Model text with every character str.splitlines() breaks at besides "\n" that JSON leaves
#: unescaped (U+2028, U+2029, U+0085) and some it escapes (U+001C, U+000B, U+000C).
SEPARATORS = "x\u2028y \u2029z \x85w \x1cv \x0bs \x0ct end"


def test_text_with_line_separators_inside_json_strings_streams_whole(cluster: Cluster, fake_llm: FakeLLM) -> None:
    """NDJSON lines end at "\\n" only: stream(), the async stream and a 202 chat's follow-up
    read the run's events whole, whatever characters the model's text holds."""
    import asyncio

    from regina.client import AsyncReginaClient

    web = cluster.start_web(env={"REGINA_LIMITS__REQUEST_TIMEOUT": "1"})
    try:
        with ReginaClient(web.url) as regina:
            iid = regina.spawn("openai-agent")["instanceId"]
            fake_llm.push_for(f"sync {iid}", Reply(text=SEPARATORS))
            events = list(regina.stream(iid, f"sync {iid}"))
            assert events[-1]["text"] == SEPARATORS, events[-1]
            assert "".join(e.get("textDelta", "") for e in events) == SEPARATORS

            async def scenario() -> list[dict[str, Any]]:
                async with AsyncReginaClient(web.url) as aregina:
                    return [e async for e in aregina.stream(iid, f"async {iid}")]

            fake_llm.push_for(f"async {iid}", Reply(text=SEPARATORS))
            assert asyncio.run(scenario())[-1]["text"] == SEPARATORS

            # A sync chat answered 202 (the model takes 3 s, the web waits 1 s) follows the events
            fake_llm.push_for(f"late {iid}", Reply(text=SEPARATORS, delay=3))
            assert regina.chat(iid, f"late {iid}")["text"] == SEPARATORS
            regina.delete(iid)
    finally:
        web.stop()
        cluster.procs.remove(web)


def test_events_after_a_finished_runs_last_seq_end_at_once(api: httpx.Client) -> None:
    """The server answers nothing more after the `finish` event: no dropped connection to retry."""
    import asyncio
    import time

    from regina.client import AsyncReginaClient

    with ReginaClient(str(api.base_url)) as regina:
        iid = regina.spawn("openai-agent")["instanceId"]
        events = list(regina.stream(iid, "done soon"))
        run_id, last = events[-1]["runId"], events[-1]["seq"]
        started = time.monotonic()
        assert list(regina.events(run_id, after=last)) == []
        assert list(regina.events(run_id, after=last - 1)) == events[-1:]

        async def scenario() -> list[dict[str, Any]]:
            async with AsyncReginaClient(str(api.base_url)) as aregina:
                return [e async for e in aregina.events(run_id, after=last)]

        assert asyncio.run(scenario()) == []
        assert time.monotonic() - started < 2  # no re-attach attempts (their delays add up to 3.75 s)
        regina.delete(iid)


def test_start_names_the_run_of_a_keyed_stream_and_starts_no_second_one(api: httpx.Client, fake_llm: FakeLLM) -> None:
    import asyncio

    from regina.client import AsyncReginaClient

    with ReginaClient(str(api.base_url)) as regina:
        iid = regina.spawn("openai-agent")["instanceId"]
        marker = f"keyed {iid}"
        fake_llm.push_for(marker, Reply(text="slow", delay=30))
        run_id = regina.start(iid, marker, idempotency_key="start-1")  # answered at once, the run goes on
        assert regina.start(iid, marker, idempotency_key="start-1") == run_id  # the key's run, again

        async def again() -> str:
            async with AsyncReginaClient(str(api.base_url)) as aregina:
                return await aregina.start(iid, marker, idempotency_key="start-1")

        assert asyncio.run(again()) == run_id
        assert regina.run(run_id)["status"] in ("queued", "running")
        assert regina.cancel(run_id) == {"cancelled": True}
        other = regina.start(iid, "unkeyed")  # no key: a run of its own
        assert other != run_id
        assert [e["type"] for e in regina.events(other)][-1] == "finish"
        assert [m["content"] for m in regina.messages(iid) if m["role"] == "user"] == [marker, "unkeyed"]
        regina.delete(iid)
