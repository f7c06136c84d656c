"""An MCP server's tool input schemas go to the model provider with every request: one that is
not a valid JSON Schema of an object would make the provider refuse every request of the
instance, so such a tool is skipped (with a warning) and the server's other tools stay."""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest

from regina.config import McpSettings
from regina.definitions import McpServer
from regina.mcp import toolset as toolset_module
from regina.mcp.toolset import McpToolset, schema_problem
from regina.outbound import Allowlist
from regina.runtime.sink import RunCancelled


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"q": {"type": "string"}}}, None),
        ({"type": "object"}, None),
        ({"type": "string"}, "is not a JSON Schema of type object"),
        ({"properties": {}}, "is not a JSON Schema of type object"),
        ({"type": "object", "properties": {"q": {"type": "strnig"}}}, "is not valid JSON Schema"),
        ({"type": "object", "required": "q"}, "is not valid JSON Schema"),
    ],
)
def test_schema_problem(schema: dict[str, object], problem: str | None) -> None:
    found = schema_problem(schema)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem)), found


def test_a_tool_with_a_broken_schema_is_skipped_and_the_others_stay() -> None:
    server = McpServer(name="s", transport="http", url="http://127.0.0.1:9/mcp")
    toolset = McpToolset("agent", [server], McpSettings(), Allowlist.parse([]))
    toolset.conns["s"].tools = [
        types.Tool(name="good", inputSchema={"type": "object", "properties": {"q": {"type": "string"}}}),
        types.Tool(name="bad", inputSchema={"type": "object", "properties": {"q": {"type": 7}}}),
    ]
    assert sorted(toolset._build()) == ["s_good"]


def test_a_replaced_tool_list_is_rebuilt_whatever_address_it_got() -> None:
    """The toolset rebuilds its tools when a server's list was replaced (a reconnect, a
    list-changed notification); a new list can take a freed one's address, so identity is not
    what tells them apart."""
    server = McpServer(name="s", transport="http", url="http://127.0.0.1:9/mcp")
    toolset = McpToolset("agent", [server], McpSettings(), Allowlist.parse([]))
    toolset.next_try["s"] = float("inf")  # never connect: only the lists below
    conn = toolset.conns["s"]
    schema = {"type": "object"}
    for round_ in range(20):
        conn.tools = [types.Tool(name=f"first{round_}", inputSchema=schema)]
        assert sorted(toolset.tools()) == [f"s_first{round_}"]
        conn.tools = [types.Tool(name=f"second{round_}", inputSchema=schema)]  # the first list is freed
        conn.tools = [types.Tool(name=f"third{round_}", inputSchema=schema)]  # often at its address
        assert sorted(toolset.tools()) == [f"s_third{round_}"]


def test_a_cancel_while_servers_connect_ends_the_step_and_leaves_no_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel (or the budget's clock) lands in the wait for a reconnect as RunCancelled, thrown
    into the waiting greenlet: it must reach the loop (which ends the run), not be taken for the
    servers' failure (logged "skipped" and not retried for retryInterval, the next run's too)."""
    server = McpServer(name="s", transport="http", url="http://127.0.0.1:9/mcp")
    toolset = McpToolset("agent", [server], McpSettings(), Allowlist.parse([]))

    def cancelled_wait(coro: Any, timeout: float | None = None) -> Any:
        coro.close()
        raise RunCancelled("cancelled", "the run was cancelled")

    monkeypatch.setattr(toolset_module, "run_coro", cancelled_wait)
    with pytest.raises(RunCancelled):
        toolset.tools()
    assert toolset.next_try == {}
    toolset.conns["s"].stale = True
    with pytest.raises(RunCancelled):
        toolset._relist([toolset.conns["s"]])
    assert toolset.next_try == {}
