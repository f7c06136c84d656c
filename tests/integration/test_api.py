"""The walking skeleton over real HTTP: web (gunicorn) → instance queue → gevent worker → fake LLM."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import socket
import time

import httpx
import pytest
from dirty_equals import IsStr

from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster


def spawn(api: httpx.Client, agent: str = "openai-agent") -> str:
    resp = api.post(f"/agents/{agent}/instances")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["instanceId"])


def test_agents_are_listed_with_the_spec_fields(api: httpx.Client) -> None:
    agents = {a["id"]: a for a in api.get("/agents").json()}
    assert agents["openai-agent"] == {
        "id": "openai-agent",
        "name": "openai-agent",
        "description": IsStr(),
        "model": "gpt-4o",
        "provider": "openai",
        "tools": [],
        "delegates": [],
        "greeting": IsStr(),
        "ready": True,
    }
    assert agents["anthropic-agent"]["provider"] == "anthropic"
    assert api.get("/agents/tool-agent").json()["tools"] == ["word_count", "shout"]


def test_spawn_returns_a_started_instance_that_any_request_can_find(api: httpx.Client) -> None:
    resp = api.post("/agents/openai-agent/instances")
    assert resp.status_code == 201
    body = resp.json()
    assert body == {
        "instanceId": IsStr(regex=r"^openai-agent-[0-9a-f]{24}$"),
        "definitionId": "openai-agent",
        "status": "started",
        "createdAt": IsStr(),
    }
    shown = api.get(f"/instances/{body['instanceId']}").json()
    assert shown["status"] == "started" and shown["member"]
    listed = [i["instanceId"] for i in api.get("/agents/openai-agent/instances").json()]
    assert body["instanceId"] in listed


@pytest.mark.parametrize("agent", ["openai-agent", "anthropic-agent"])
def test_chat_answer_and_usage_come_from_the_model_server(api: httpx.Client, fake_llm: FakeLLM, agent: str) -> None:
    iid = spawn(api, agent)
    resp = api.post(f"/instances/{iid}/chat", json={"message": f"hello from {agent}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"] == f"echo: hello from {agent}"
    request = next(r for r in fake_llm.requests if r.last_user_text == f"hello from {agent}")
    assert request.api == ("anthropic" if agent == "anthropic-agent" else "openai")
    prompt, completion = request.usage
    assert resp.json()["usage"] == {"promptTokens": prompt, "completionTokens": completion}


def test_history_is_kept_between_chats(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(api)
    api.post(f"/instances/{iid}/chat", json={"message": "first"})
    api.post(f"/instances/{iid}/chat", json={"message": "second"})
    last = next(r for r in reversed(fake_llm.requests) if r.last_user_text == "second")
    texts = [m["content"] for m in last.messages if m["role"] in ("user", "assistant")]
    assert texts == ["first", "echo: first", "second"]
    messages = api.get(f"/instances/{iid}/messages").json()
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
        ("assistant", "echo: second"),
    ]


def test_eight_concurrent_chats_over_four_instances_all_answer(api: httpx.Client) -> None:
    ids = [spawn(api) for _ in range(4)]
    jobs = [(ids[i % 4], f"message {i} for {ids[i % 4][-6:]}") for i in range(8)]

    def chat(job: tuple[str, str]) -> str:
        iid, text = job
        with httpx.Client(base_url=str(api.base_url), timeout=60) as c:
            r = c.post(f"/instances/{iid}/chat", json={"message": text})
            assert r.status_code == 200, r.text
            return str(r.json()["text"])

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(chat, jobs))
    assert answers == [f"echo: {text}" for _, text in jobs]


def test_two_concurrent_chats_to_one_instance_both_succeed_in_order(api: httpx.Client, fake_llm: FakeLLM) -> None:
    from tests.harness.fake_llm import Reply

    iid = spawn(api)
    fake_llm.push_for("slow-one", Reply(text="first done", delay=0.5))

    def chat(text: str) -> str:
        with httpx.Client(base_url=str(api.base_url), timeout=60) as c:
            return str(c.post(f"/instances/{iid}/chat", json={"message": text}).json()["text"])

    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(chat, "slow-one")
        fake_llm.wait_for_requests(1, timeout=10)
        second = pool.submit(chat, "quick-two")
        assert first.result() == "first done"
        assert second.result() == "echo: quick-two"
    roles = [(m["role"], m["content"]) for m in api.get(f"/instances/{iid}/messages").json()]
    assert roles == [
        ("user", "slow-one"),
        ("assistant", "first done"),
        ("user", "quick-two"),
        ("assistant", "echo: quick-two"),
    ]


class TestBadInput:
    """Every malformed request gets a clear JSON 4xx and changes nothing."""

    def test_unknown_agent_is_404(self, api: httpx.Client) -> None:
        for method, path in [
            ("GET", "/agents/nope"),
            ("POST", "/agents/nope/instances"),
            ("GET", "/agents/nope/instances"),
        ]:
            resp = api.request(method, path)
            assert resp.status_code == 404
            assert "nope" in resp.json()["error"]

    def test_unknown_instance_is_404(self, api: httpx.Client) -> None:
        for method, path in [
            ("GET", "/instances/openai-agent-000000000000000000000000"),
            ("POST", "/instances/openai-agent-000000000000000000000000/chat"),
            ("POST", "/instances/bogus/suspend"),
            ("DELETE", "/instances/bogus"),
            ("GET", "/instances/bogus/messages"),
        ]:
            resp = api.request(method, path, json={"message": "hi"})
            assert resp.status_code == 404, (method, path, resp.text)
            assert "not found" in resp.json()["error"]

    @pytest.mark.parametrize(
        ("body", "needle"),
        [
            ({}, "missing field 'message'"),
            ({"message": 42}, "must be a string"),
            ({"message": None}, "missing field 'message'"),
            (["message"], "JSON object"),
        ],
    )
    def test_bad_message_is_400_and_changes_nothing(
        self, api: httpx.Client, fake_llm: FakeLLM, body: object, needle: str
    ) -> None:
        iid = spawn(api)
        for path in ("chat", "chat/stream", "steer"):
            resp = api.post(f"/instances/{iid}/{path}", json=body)
            assert resp.status_code == 400, resp.text
            assert needle in resp.json()["error"]
        assert api.get(f"/instances/{iid}/messages").json() == []
        assert not fake_llm.requests

    @pytest.mark.parametrize(
        ("raw", "says"),
        [
            (b"{not json", "request body is not valid JSON: Expecting property name enclosed in double quotes"),
            (b'{"message": NaN}', "request body is not valid JSON: NaN is not a JSON value"),
            (b'{"message": "hi", "x": -Infinity}', "request body is not valid JSON: -Infinity is not a JSON value"),
            (b'{"message": "hi", "x": ' + b"9" * 5000 + b"}", "request body holds a number of more than 4300 digits"),
        ],
    )
    def test_body_that_is_not_json_is_400_saying_why(self, api: httpx.Client, raw: bytes, says: str) -> None:
        iid = spawn(api)
        resp = api.post(f"/instances/{iid}/chat", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400
        assert resp.json()["error"].startswith(says), resp.text
        assert api.get(f"/instances/{iid}/messages").json() == []

    def test_oversized_body_is_413(self, api: httpx.Client) -> None:
        iid = spawn(api)
        resp = api.post(f"/instances/{iid}/chat", json={"message": "x" * 2_000_000})
        assert resp.status_code == 413
        assert "too large" in resp.json()["error"]
        assert api.get(f"/instances/{iid}/messages").json() == []


def test_an_idle_keep_alive_connection_is_still_served_after_a_few_seconds(api: httpx.Client) -> None:
    # Clients pool connections for seconds (httpx: 5 s, Node: 5 s, load balancers: 60 s); a server
    # that closes an idle one sooner races the client's next request on it, which then fails with
    # "server disconnected without sending a response" — seen in the pause chaos test.
    url = httpx.URL(str(api.base_url))
    request = f"GET /healthz HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode()
    with socket.create_connection((url.host, url.port or 80), timeout=10) as sock:
        sock.sendall(request)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        # When the connection idles longer than a short server keep-alive would allow
        time.sleep(3.5)
        # Then the same connection still answers the next request
        sock.sendall(request)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length body (what /healthz answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_a_web_process_with_idle_keep_alive_connections_stops_at_once(cluster: Cluster) -> None:
    # Given a web process of its own with a client's idle keep-alive connection open on it
    web = cluster.start_web()
    url = httpx.URL(web.url)
    with socket.create_connection((url.host, url.port or 80), timeout=10) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        # When it is told to stop
        started = time.monotonic()
        web.popen.send_signal(signal.SIGTERM)
        web.popen.wait(timeout=60)
        # Then the idle connection does not hold it up for the graceful timeout (30 s)
        assert time.monotonic() - started < 8
        assert sock.recv(1) == b""  # closed by the server
