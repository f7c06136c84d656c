"""What an instance is equipped with when a worker attaches it: tools, where they run, its prompt.

- Tools in the seed's merge order (`regina.runtime.tools.merge`): the defaults over the VFS, the
  definition's MCP servers (connected by `InstanceTools.open()`), its own tool modules, and
  `delegate` when it has delegates.
- The runner: the shared thread pool, or (`useProcesses`) the instance's own tool process, which
  runs the defaults and the definition's tools; MCP and `delegate` are `inline` and stay in the
  worker, where the MCP sessions and the Redis connections live (docs/isolation.md).
- The system prompt: the definition's body, plus the section listing its delegates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from regina.config import Settings
from regina.definitions import AgentDefinition
from regina.delegation import Delegation
from regina.outbound import Allowlist
from regina.runtime.tools.base import Tool
from regina.runtime.tools.child import ChildSpec
from regina.runtime.tools.merge import InstanceTools
from regina.runtime.tools.process import ProcessRunner
from regina.runtime.tools.runner import ThreadRunner, ToolRunner, thread_pool
from regina.runtime.tools.toolset import build_tools
from regina.vfs.base import VFS


@dataclass(frozen=True)
class Equipment:
    """Builds an attached instance's tools, tool runner and system prompt."""

    settings: Settings
    env: dict[str, str]
    allow: Allowlist
    delegation: Delegation | None = None

    def tools(self, instance_id: str, vfs: VFS, definition: AgentDefinition, run: Callable[[], str]) -> InstanceTools:
        """Default, MCP, the definition's own and the `delegate` tool; `run()` gives the running
        run's id (what a delegation needs)."""
        s = self.settings
        defaults = build_tools(vfs, env=self.env, limits=s.limits, network=s.bash_network, user_tools={})
        mcp = None
        if definition.mcp_servers:
            # The MCP SDK costs ≈ 0.6 s of CPU to import: a worker imports it after it joins
            # (workers/signals.py), or here for the first instance that has MCP servers.
            from regina.mcp.toolset import McpToolset

            mcp = McpToolset(definition.name, definition.mcp_servers, s.mcp, self.allow)
        return InstanceTools(
            defaults=defaults,
            user=dict(definition.user_tools),
            mcp=mcp,
            delegate=self._delegate(instance_id, definition, run),
        )

    def _delegate(self, instance_id: str, definition: AgentDefinition, run: Callable[[], str]) -> Tool | None:
        if not definition.delegates or self.delegation is None:
            return None
        return self.delegation.tool(instance_id, definition.delegates, run)

    def system_prompt(self, definition: AgentDefinition) -> str:
        """The definition's prompt, with its delegates listed."""
        if self.delegation is None:
            return definition.system_prompt
        return self.delegation.system_prompt(definition)

    def runner(
        self,
        instance_id: str,
        definition: AgentDefinition,
        tools: InstanceTools,
        on_change: Callable[..., int | None] | None = None,
        before_call: Callable[[], None] | None = None,
        on_unreported: Callable[[], None] | None = None,
    ) -> ToolRunner:
        """Where the instance's tool calls run: the thread pool, or its own process (docs/isolation.md);
        `on_change` journals the VFS changes a tool process reports (`JournalVFS.record`),
        `before_call` marks the file changed before the process may write it (`mark_changing`),
        `on_unreported` asks for a backup after a process ended mid-call (`must_checkpoint`)."""
        s = self.settings
        threads = ThreadRunner(s.limits.tool_timeout, thread_pool(s.concurrency))
        if not definition.use_processes:
            return threads
        spec = ChildSpec(
            instance_id=instance_id,
            vfs_backend=s.vfs_backend,
            vfs_dir=s.vfs_dir,
            fs_root_path=s.fs_root_path,
            vfs_synchronous=s.vfs_synchronous,
            env=self.env,
            limits=s.limits.model_dump(),
            network=s.bash_network,
            tool_paths=definition.tools,
            memory_mb=s.limits.tool_memory_mb,
            journal=on_change is not None,
        )
        return ProcessRunner(
            spec,
            child_tools={name for name, tool in {**tools.defaults, **tools.user}.items() if not tool.inline},
            timeout=s.limits.tool_timeout,
            cpu_seconds=s.limits.tool_cpu_seconds,
            fallback=threads,
            on_change=on_change,
            before_call=before_call,
            on_unreported=on_unreported,
        )
