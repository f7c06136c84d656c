"""The `delegate` tool: one agent instance hands a task to an instance of another agent (SPEC §5).

- Offered only when the definition lists `delegates`, and only for those names.
- The caller owns its children: the pairing (caller, agentType) → child instance is kept in Redis
  (`keys.delegates`), so the same child — with its own conversation — serves every turn. A
  started child is used as it is, a suspended one is resumed by the chat itself (it may land on
  any worker), and a child that is gone is replaced by a new spawn.
- The message is sent as a chat through the `Coordinator` (the same path as the HTTP API, so the
  child may live on another worker); its final text is the tool result, a failed or cancelled
  delegated run is reported to the model as a tool error.
- Depth: a user's chat runs at depth 0, a delegated run at its caller's depth + 1, recorded in
  the run record; a delegation that would run deeper than `MAX_DEPTH` is a tool error.
- Waiting is bounded by `limits.requestTimeout` from the call (less a margin to answer in), and
  by the caller's run (a cancel or its `maxSecondsPerRun` clock stops the wait): no greenlet
  waits forever on a child, and a child that is too slow has its run cancelled. Not by the
  caller's run's start: a run may go on past `requestTimeout` (a stream, a sync chat answered
  202), and one that delegated late got no time at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from pydantic import BaseModel, Field

from regina import ids, keys
from regina.definitions import AgentDefinition
from regina.errors import DefinitionError, ReginaError, StillRunning, ToolError, Unavailable
from regina.lifecycle import Coordinator
from regina.runs.service import RunService
from regina.runs.store import DELEGATE_FIELD, ENDED
from regina.runtime.tools.base import Tool

MAX_DEPTH = 5
"""Deepest delegated run: a chain of 5 delegations works, the 6th is refused."""

ANSWER_MARGIN = 1.0
"""Seconds (at least; 10 % of the wait otherwise) a caller keeps for itself after waiting on a
delegate, so that a sync chat that delegated at once still answers within `requestTimeout`."""


class DelegateParams(BaseModel):
    """Arguments of the `delegate` tool."""

    agentType: str = Field(description="Id of the agent to delegate to (one of the listed delegates)")  # noqa: N815
    message: str = Field(min_length=1, description="The task or question for that agent")


def prompt_section(definition: AgentDefinition, lookup: Callable[[str], AgentDefinition]) -> str:
    """The system-prompt section that lists an agent's delegates (empty when it has none)."""
    if not definition.delegates:
        return ""
    lines = [
        "## Delegates",
        "",
        "You can hand a task to one of these agents with the `delegate` tool "
        '(`{"agentType": "<id>", "message": "<task>"}`); its answer comes back as the tool result.',
        "",
    ]
    for name in definition.delegates:
        try:
            d = lookup(name)
        except (DefinitionError, ReginaError):
            continue
        entry = f"- id: `{d.id}`; name: {d.name}"
        if d.description:
            entry += f"; description: {d.description}"
        if d.greeting:
            entry += f"; greeting: {d.greeting}"
        lines.append(entry)
    return "\n".join(lines)


WAIT_CHUNK = 2.0
"""Seconds between two looks, while a caller waits, at whether its delegate can still run."""


class Delegation:
    """Runs delegations for the instances of one worker, through the coordinator."""

    def __init__(self, coordinator: Coordinator, client: redis.Redis, member_id: str = "") -> None:
        self.coordinator = coordinator
        self.r = client
        self.member_id = member_id
        #: Set when this worker's warm shutdown begins (workers/signals.py): it soon takes no step
        #: any more, and waits for the running ones — a caller's among them, waiting on its child.
        self.stopping = False

    def system_prompt(self, definition: AgentDefinition) -> str:
        """The definition's prompt, with the delegates section when it has delegates."""
        section = prompt_section(definition, self.coordinator.registry.get)
        if not section:
            return definition.system_prompt
        return f"{definition.system_prompt.rstrip()}\n\n{section}\n"

    def tool(self, caller_id: str, delegates: Sequence[str], context: Callable[[], str]) -> Tool:
        """The `delegate` tool of one instance; `context()` gives the running run's id."""
        allowed = list(delegates)
        schema = DelegateParams.model_json_schema()
        schema["properties"]["agentType"]["enum"] = allowed

        def delegate(params: DelegateParams) -> str:
            run_id = context()
            depth = int(self.r.hget(keys.run_record(run_id), "depth") or 0)
            deadline = time.monotonic() + self.coordinator.settings.limits.request_timeout
            return self.delegate(caller_id, allowed, params.agentType, params.message, depth, deadline, run_id)

        return Tool(
            name="delegate",
            description="Send a task to another agent and get its answer: " + ", ".join(allowed),
            parameters=DelegateParams,
            fn=delegate,
            json_schema=schema,
            inline=True,  # waits on Redis from the step's greenlet, never in a tool thread
        )

    def delegate(
        self,
        caller_id: str,
        allowed: Sequence[str],
        agent_type: str,
        message: str,
        depth: int,
        deadline: float,
        caller_run: str = "",
    ) -> str:
        """Chat with the caller's child of `agent_type` and return its answer (ToolError otherwise).
        The caller's run record names the child's run while it waits (`delegate`): a caller whose
        worker died never hears the answer, and its redelivered step cancels that run
        (`RunStore.cancel_orphaned_delegate`) instead of leaving it to spend tokens and hold the
        child."""
        if agent_type not in allowed:
            raise ToolError(
                f"agent {agent_type!r} is not one of this agent's delegates; it may delegate to: {', '.join(allowed)}"
            )
        if depth + 1 > MAX_DEPTH:
            raise ToolError(
                f"delegation depth limit reached: this run is already {depth} delegations deep "
                f"and at most {MAX_DEPTH} are allowed; answer without delegating"
            )
        deadline -= max(ANSWER_MARGIN, 0.1 * (deadline - time.monotonic()))  # the caller must still answer
        if deadline - time.monotonic() < ANSWER_MARGIN:
            raise ToolError("no time left in this run to wait for a delegate")
        child = self._child(caller_id, agent_type)
        runs = self.coordinator.runs
        run_id = ids.new_run_id()
        waiting = keys.run_record(caller_run) if caller_run else None
        try:
            if waiting is not None:
                self.r.hset(waiting, DELEGATE_FIELD, run_id)
            try:
                runs.start(child, message, stream=False, depth=depth + 1, run_id=run_id)
            except BaseException:
                _cancel(runs, run_id)  # cut short (the caller's run cancelled) after the run opened
                raise
            try:
                final = self._wait(runs, run_id, child, deadline)
            except ReginaError as exc:
                _cancel(runs, run_id)  # nobody waits for it any more
                raise ToolError(f"delegate {agent_type!r} ({child}) did not answer: {exc.message}") from exc
            except BaseException:
                _cancel(runs, run_id)  # the caller's run was cancelled while it waited
                raise
        finally:
            if waiting is not None:
                with contextlib.suppress(redis.RedisError):
                    self.r.hdel(waiting, DELEGATE_FIELD)
        return _answer(agent_type, child, final)

    def _wait(self, runs: RunService, run_id: str, child: str, deadline: float) -> dict[str, Any]:
        """The delegated run's last event, followed until `deadline` a chunk at a time: between
        two, a worker shutting down gives up on a child it holds whose run has not started. Its
        consumer stops taking steps a few seconds into the warm shutdown, which waits for the
        running steps: the caller held it until the delegation's deadline, or until the platform
        killed the worker (losing the caller's step)."""
        final: dict[str, Any] = {}
        seq = 0
        while True:
            chunk = max(0.1, min(WAIT_CHUNK, deadline - time.monotonic()))
            try:
                for event in runs.follow_known(run_id, child, after=seq, timeout=chunk):
                    final, seq = event, int(event.get("seq", seq))
                return final
            except Unavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                # StillRunning: go on. A plain Unavailable is no worker to serve the child, or
                # the run ending between the chunk's two reads of its status: then the next
                # chunk reads its last events.
                if not isinstance(exc, StillRunning) and self.r.hget(keys.run_record(run_id), "status") not in ENDED:
                    raise
                self._refuse_if_stranded(run_id, child)

    def _refuse_if_stranded(self, run_id: str, child: str) -> None:
        if not self.stopping:
            return
        rec = self.coordinator.store.get(child)
        if (
            rec is not None
            and rec.member == self.member_id
            and self.r.hget(keys.run_record(run_id), "status") == "queued"
        ):
            raise ToolError("this worker is shutting down and holds the delegate, whose run had not started; try again")

    def _child(self, caller_id: str, agent_type: str) -> str:
        """The caller's child of `agent_type`: the recorded one while it exists, else a new one."""
        key = keys.delegates(caller_id)
        child = self.r.hget(key, agent_type)
        if isinstance(child, bytes):
            child = child.decode()
        if child and self.coordinator.store.get(child) is not None:
            return str(child)
        # Paired before it exists: a spawn cut short (the caller's run cancelled) leaves a
        # child its caller still owns (reused next time, deleted with it), not a stray one.
        child = ids.new_instance_id(agent_type)
        self.r.hset(key, agent_type, child)
        try:
            self.coordinator.spawn(agent_type, instance_id=child)
        except ReginaError as exc:
            raise ToolError(f"could not start an instance of {agent_type!r}: {exc.message}") from exc
        return child


def _cancel(runs: RunService, run_id: str) -> None:
    with contextlib.suppress(ReginaError):
        runs.cancel(run_id)


def _answer(agent_type: str, child: str, final: dict[str, Any]) -> str:
    kind = final.get("type")
    if kind == "error":
        raise ToolError(f"delegate {agent_type!r} ({child}) failed: {final.get('error', 'unknown error')}")
    reason = final.get("finishReason")
    if reason in ("cancelled", "error", "budget"):
        raise ToolError(f"the delegated run of {agent_type!r} ({child}) was {reason}: {final.get('text', '')}".rstrip())
    return str(final.get("text", ""))
