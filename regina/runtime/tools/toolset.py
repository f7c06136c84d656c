"""The tools every instance gets (bash and the file tools) plus its definition's own.

Built in one place because two processes build them: the worker (for the schemas the model
sees, and to run them in threads) and, with `useProcesses`, the instance's tool process.
"""

from __future__ import annotations

from collections.abc import Mapping

from regina.config import Limits
from regina.runtime.tools.base import Tool
from regina.runtime.tools.bash import bash_tool
from regina.runtime.tools.files import file_tools
from regina.vfs.base import VFS
from regina.vfs.guarded import ToolVFS


def build_tools(
    vfs: VFS, *, env: dict[str, str], limits: Limits, network: bool, user_tools: Mapping[str, Tool]
) -> dict[str, Tool]:
    """`bash`, `read_file`, `write_file`, `edit_file` over `vfs`, then `user_tools` (which win).

    The built-in tools see `vfs` through `ToolVFS`: they may read `/.session/` but never change it.
    """
    view = ToolVFS(vfs, limits.max_file_bytes)
    tools: dict[str, Tool] = {"bash": bash_tool(view, env=env, limits=limits, network=network)}
    tools.update(file_tools(view, max_output_chars=limits.max_tool_output_chars, max_file_bytes=limits.max_file_bytes))
    tools.update(user_tools)
    return tools
