"""The tools of one attached instance, merged in the seed's order (SPEC §2).

`{**default_tools, **mcp_tools, **user_tools, "delegate": …}`: an MCP tool replaces a default
tool of the same name, a definition's own tool replaces both, and `delegate` (offered only when
the definition has delegates) always wins. MCP tools can change between steps (a server
reconnects or announces a new tool list), so the merge is made for every step; it is cached
while nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from regina.runtime.tools.base import Tool


class McpTools(Protocol):
    """What the merge needs of an instance's MCP toolset (`regina.mcp.toolset.McpToolset`)."""

    on_degraded: Callable[[str, str], None] | None

    def tools(self) -> dict[str, Tool]: ...

    def open(self) -> None: ...

    def close(self) -> None: ...


_NO_TOOLS: dict[str, Tool] = {}


def merge_tools(
    defaults: dict[str, Tool], mcp: dict[str, Tool], user: dict[str, Tool], delegate: Tool | None
) -> dict[str, Tool]:
    """`{**defaults, **mcp, **user, "delegate": delegate}` (no `delegate` key when None)."""
    merged = {**defaults, **mcp, **user}
    if delegate is not None:
        merged["delegate"] = delegate
    return merged


@dataclass
class InstanceTools:
    """Default, MCP, user and delegate tools of one instance."""

    defaults: dict[str, Tool]
    user: dict[str, Tool]
    mcp: McpTools | None = None
    delegate: Tool | None = None
    _merged: dict[str, Tool] | None = field(default=None, init=False, repr=False)
    _mcp_seen: dict[str, Tool] | None = field(default=None, init=False, repr=False)

    def for_step(self) -> dict[str, Tool]:
        """The merged tools for the next model step (reconnects dropped MCP servers first)."""
        mcp = self.mcp.tools() if self.mcp is not None else _NO_TOOLS
        if self._merged is None or mcp is not self._mcp_seen:
            self._merged = merge_tools(self.defaults, mcp, self.user, self.delegate)
            self._mcp_seen = mcp
        return self._merged

    def offers(self, name: str) -> bool:
        """Whether the step in progress offers a tool called `name` (the merge `for_step` made
        last, nothing reconnected): run metrics label a call by its name only if so, since a
        name the model made up would be a series of its own for good."""
        return self._merged is not None and name in self._merged

    def bind_run(self, on_degraded: Callable[[str, str], None]) -> None:
        """Report MCP servers that drop during the coming run through `on_degraded(server, error)`."""
        if self.mcp is not None:
            self.mcp.on_degraded = on_degraded

    def open(self) -> None:
        """Connect the MCP servers (at attach)."""
        if self.mcp is not None:
            self.mcp.open()

    def close(self) -> None:
        """Close the MCP connections (suspend, delete, shutdown)."""
        if self.mcp is not None:
            self.mcp.close()
