"""Tool merge order per instance: `{**defaults, **mcp, **user, "delegate": …}` (SPEC §2)."""

from __future__ import annotations

from pydantic import BaseModel

from regina.runtime.tools.base import Tool
from regina.runtime.tools.merge import InstanceTools, merge_tools


class _P(BaseModel):
    pass


def _tool(name: str, origin: str) -> Tool:
    return Tool(name=name, description=origin, parameters=_P, fn=lambda _p: origin)


def test_each_layer_overrides_the_one_before() -> None:
    defaults = {"bash": _tool("bash", "default"), "read_file": _tool("read_file", "default")}
    # An MCP server named "read" with a tool "file" is `read_file`: it replaces the default.
    mcp = {"read_file": _tool("read_file", "mcp"), "web_search": _tool("web_search", "mcp")}
    # A definition's own tool replaces an MCP tool of the same name; its "delegate" does not win.
    user = {"web_search": _tool("web_search", "user"), "delegate": _tool("delegate", "user")}
    merged = merge_tools(defaults, mcp, user, _tool("delegate", "delegation"))
    assert {name: t.description for name, t in merged.items()} == {
        "bash": "default",
        "read_file": "mcp",
        "web_search": "user",
        "delegate": "delegation",
    }
    # Without delegates there is no delegate tool but the user's own.
    assert merge_tools(defaults, mcp, user, None)["delegate"].description == "user"
    assert "delegate" not in merge_tools(defaults, mcp, {}, None)


def test_instance_tools_merge_once_while_nothing_changes() -> None:
    tools = InstanceTools(
        defaults={"bash": _tool("bash", "default")},
        user={"bash": _tool("bash", "user")},
        delegate=_tool("delegate", "delegation"),
    )
    first = tools.for_step()
    assert {name: t.description for name, t in first.items()} == {"bash": "user", "delegate": "delegation"}
    assert tools.for_step() is first
