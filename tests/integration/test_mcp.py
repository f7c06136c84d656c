"""MCP servers end to end: real `mcp` SDK servers over SSE and streamable HTTP, real workers.

One private cluster (two workers, fs storage, `outboundAllowlist: 127.0.0.1`) serves the
module; `mcp-agent` gets its server URLs and the header secret from the workers' environment.
The SSRF refusals run on the shared cluster, which has no allow-list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness.clusters import private_cluster
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.mcp_server import McpServerProc
from tests.harness.ports import free_port
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until
from tests.integration.test_api import spawn

SECRET = "s3cret-key-for-the-test"
#: A credential in the SSE server's URL (the server ignores it); no variable name says "secret".
URL_CREDENTIAL = "url-credential-0123456789"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, McpServerProc]]:
    sse = McpServerProc("sse").start()
    web = McpServerProc("http", require_header=f"X-Api-Key={SECRET}").start()
    yield {"sse": sse, "web": web}
    sse.stop()
    web.stop()


@pytest.fixture(scope="module")
def mcp_cluster(servers: dict[str, McpServerProc], fake_llm: FakeLLM) -> Iterator[Cluster]:
    env = {
        "REGINA_OUTBOUND_ALLOWLIST": "127.0.0.1",
        "REGINA_MCP__CONNECT_TIMEOUT": "5",
        # The default back-off: a server that comes back must work at the next call even
        # while its step-start retry waits (the restart below lands inside that wait).
        "REGINA_MCP__RETRY_INTERVAL": "30",
        "TEST_MCP_SSE_URL": servers["sse"].url,
        "TEST_MCP_HTTP_URL": servers["web"].url,
        "TEST_MCP_KEY": SECRET,
        "TEST_MCP_SSE_QUERY": f"access_token={URL_CREDENTIAL}",
        "TEST_MCP_DEAD_URL": f"http://127.0.0.1:{free_port()}/mcp",
    }
    with private_cluster(fake_llm.url, **env) as c:
        c.env_overrides.update(REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(c.tmp / "backups"))
        yield c.start(workers=2)


@pytest.fixture
def mcp_api(mcp_cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mcp_cluster.web.url, timeout=60) as client:
        yield client


def tool_messages(history: list[dict[str, Any]]) -> dict[str, str]:
    """Tool name → content of the tool messages in a conversation."""
    return {m["name"]: m["content"] for m in history if m["role"] == "tool"}


def stream(api: httpx.Client, iid: str, message: str) -> list[dict[str, Any]]:
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": message}) as resp:
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.iter_lines() if line]


def test_prefixed_tools_are_offered_with_their_schemas_called_and_stored(
    mcp_api: httpx.Client, mcp_cluster: Cluster, fake_llm: FakeLLM
) -> None:
    iid = spawn(mcp_api, "mcp-agent")
    fake_llm.push(
        Reply(
            tool_calls=[
                ToolCall("sse_echo", {"text": "over sse"}),
                ToolCall("web_add", {"a": 2, "b": 3}),
                ToolCall("sse_pixel", {}),
                ToolCall("web_echo", {"text": 7}),
            ]
        ),
        Reply(text="all four done"),
    )
    resp = mcp_api.post(f"/instances/{iid}/chat", json={"message": "use the MCP tools"})
    assert resp.status_code == 200 and resp.json()["text"] == "all four done"

    first = fake_llm.requests[0]
    names = set(first.tool_names)
    # Both transports, prefixed by server name; the header-authenticated server too (its key came
    # from ${TEST_MCP_KEY}); the dead server is skipped; the defaults are still there.
    assert {"sse_echo", "sse_add", "sse_pixel", "sse_add_tool", "web_echo", "web_add"} <= names
    assert {"bash", "read_file", "write_file", "edit_file"} <= names
    assert not any(n.startswith(("dead_", "locked_")) for n in names)
    add = next(t for t in first.body["tools"] if t["function"]["name"] == "web_add")["function"]
    assert add["description"] == "Add two integers"
    integer = {"type": "integer"}
    assert add["parameters"]["properties"] == {"a": {"title": "A", **integer}, "b": {"title": "B", **integer}}
    assert add["parameters"]["required"] == ["a", "b"]

    results = {m["tool_call_id"]: m["content"] for m in fake_llm.requests[1].messages if m["role"] == "tool"}
    assert list(results.values())[:3] == ["echo: over sse", '{"sum": 5}', "[image: image/png, 70 bytes]"]
    # Bad arguments are the server's to judge: its validation error reaches the model.
    assert "error" in json.loads(list(results.values())[3])

    history = mcp_api.get(f"/instances/{iid}/messages").json()
    stored = tool_messages(history)
    assert stored["sse_echo"] == "echo: over sse" and stored["web_add"] == '{"sum": 5}'
    assert stored["sse_pixel"] == "[image: image/png, 70 bytes]"

    logs = "".join(p.log() for p in mcp_cluster.procs if p.name.startswith("worker"))
    assert "agent mcp-agent: MCP server dead skipped: " in logs
    # The same server with the wrong key is refused by it (so the header is what let `web` in).
    assert "agent mcp-agent: MCP server locked skipped: " in logs


def test_a_secret_a_tool_echoes_never_reaches_the_model_or_the_transcript(
    mcp_api: httpx.Client, fake_llm: FakeLLM
) -> None:
    """SPEC §10: the header's key and the credential in a server's URL are secrets; a tool result
    carrying one (a server echoing it, an HTTP error naming the URL) reaches neither the model,
    the stored conversation nor the stream."""
    iid = spawn(mcp_api, "mcp-agent")
    fake_llm.push(
        Reply(tool_calls=[ToolCall("sse_echo", {"text": f"key {SECRET} and {URL_CREDENTIAL}"})]),
        Reply(text="echoed"),
    )
    events = stream(mcp_api, iid, "echo the secrets")
    assert events[-1]["type"] == "finish"
    results = [m["content"] for m in fake_llm.requests[1].messages if m["role"] == "tool"]
    assert results == ["echo: key [redacted] and [redacted]"]
    assert tool_messages(mcp_api.get(f"/instances/{iid}/messages").json())["sse_echo"] == results[0]
    shown = json.dumps(events)
    assert SECRET not in shown and URL_CREDENTIAL not in shown


def test_a_tool_list_change_is_picked_up_at_the_next_step(mcp_api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = spawn(mcp_api, "mcp-agent")
    fake_llm.push(
        Reply(tool_calls=[ToolCall("sse_add_tool", {"name": "fresh"})]),
        Reply(tool_calls=[ToolCall("sse_extra_fresh", {})]),
        Reply(text="used the new tool"),
    )
    assert mcp_api.post(f"/instances/{iid}/chat", json={"message": "grow"}).json()["text"] == "used the new tool"
    assert "sse_extra_fresh" not in fake_llm.requests[0].tool_names
    assert "sse_extra_fresh" in fake_llm.requests[1].tool_names
    assert tool_messages(mcp_api.get(f"/instances/{iid}/messages").json())["sse_extra_fresh"] == "extra fresh"


def test_a_server_killed_mid_run_degrades_its_tools_and_the_run_completes(
    mcp_api: httpx.Client, servers: dict[str, McpServerProc], fake_llm: FakeLLM
) -> None:
    iid = spawn(mcp_api, "mcp-agent")
    fake_llm.push(
        Reply(tool_calls=[ToolCall("sse_echo", {"text": "before"})]),
        Reply(tool_calls=[ToolCall("sse_echo", {"text": "after"})], delay=1.5),
        Reply(text="carried on"),
    )
    sse = servers["sse"]
    with mcp_api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "echo twice"}) as resp:
        fake_llm.wait_for_requests(2, timeout=30)
        sse.kill()  # while the model "thinks" about its second step
        events = [json.loads(line) for line in resp.iter_lines() if line]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "finish" and events[-1]["text"] == "carried on"
    degraded = [e for e in events if e["type"] == "tool-degraded"]
    assert len(degraded) == 1 and degraded[0]["server"] == "sse" and degraded[0]["error"]
    results = [e["result"] for e in events if e["type"] == "tool-result"]
    assert results[0] == "echo: before"
    assert "MCP server 'sse' is unavailable" in results[1]["error"]
    assert kinds.index("tool-degraded") < len(kinds) - 1

    # The server comes back on the same port: the next step reconnects and the tools work.
    servers["sse"] = McpServerProc("sse", port=sse.port).start()
    fake_llm.push(Reply(tool_calls=[ToolCall("sse_echo", {"text": "again"})]), Reply(text="back"))
    events = stream(mcp_api, iid, "echo again")
    assert [e["result"] for e in events if e["type"] == "tool-result"] == ["echo: again"]
    assert not [e for e in events if e["type"] == "tool-degraded"]


def test_after_suspend_and_resume_on_another_worker_the_tools_work_again(
    mcp_api: httpx.Client, mcp_cluster: Cluster, fake_llm: FakeLLM
) -> None:
    iid = spawn(mcp_api, "mcp-agent")
    fake_llm.push(Reply(tool_calls=[ToolCall("web_echo", {"text": "one"})]), Reply(text="first"))
    assert mcp_api.post(f"/instances/{iid}/chat", json={"message": "first"}).json()["text"] == "first"
    owner = mcp_api.get(f"/instances/{iid}").json()["member"]
    assert mcp_api.post(f"/instances/{iid}/suspend").status_code == 204
    # Its worker leaves, so the resume has to land on the other one (restoring from storage).
    proc = next(p for p in mcp_cluster.procs if p.member_id == owner)
    proc.stop()
    fake_llm.push(Reply(tool_calls=[ToolCall("web_echo", {"text": "two"}), ToolCall("sse_echo", {"text": "3"})]))
    fake_llm.push(Reply(text="second"))
    assert mcp_api.post(f"/instances/{iid}/chat", json={"message": "second"}).json()["text"] == "second"
    assert mcp_api.get(f"/instances/{iid}").json()["member"] != owner
    history = mcp_api.get(f"/instances/{iid}/messages").json()
    assert [m["content"] for m in history if m["role"] == "tool"] == ["echo: one", "echo: two", "echo: 3"]
    mcp_cluster.start_worker()  # leave two workers behind


def test_loopback_private_and_names_resolving_to_loopback_are_refused(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    iid = spawn(api, "ssrf-agent")
    assert api.post(f"/instances/{iid}/chat", json={"message": "hello"}).json()["text"] == "echo: hello"
    names = fake_llm.requests[-1].tool_names
    assert not [n for n in names if n.split("_")[0] in ("loopback", "named", "mapped", "metadata")]

    def logs() -> str:
        return "".join(p.log() for p in cluster.procs if p.name.startswith("worker"))

    expected = [
        "agent ssrf-agent: MCP server loopback skipped: refused: 127.0.0.1 is a loopback address",
        "agent ssrf-agent: MCP server named skipped: refused: localhost resolves to ",
        "agent ssrf-agent: MCP server mapped skipped: refused: ::ffff:127.0.0.1 is the IPv4-mapped form of 127.0.0.1",
        "agent ssrf-agent: MCP server metadata skipped: refused: 169.254.169.254 is a link-local address",
    ]
    wait_until(lambda: all(line in logs() for line in expected), timeout=10, what="the refusals in the worker log")
