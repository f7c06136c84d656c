"""An MCP server's tool input schemas go to the model provider with every request: one that is
not a valid JSON Schema of an object would make the provider refuse every request of the
instance, so such a tool is skipped (with a warning) and the server's other tools stay."""

from __future__ import annotations

import mcp_types as types
import pytest

from regina.config import McpSettings
from regina.definitions import McpServer
from regina.mcp.toolset import McpToolset, schema_problem
from regina.outbound import Allowlist


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
