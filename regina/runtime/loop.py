"""The agentic loop: one chat turn of one instance (SPEC §4, §5, §12).

Flow of `run_turn`:

1. Repair the stored transcript (a crash may have left a tool call without a result: it gets an
   "outcome unknown" result, never a silent re-run), then load the history (cached).
2. Drain steering first — a steer sent while no run was going is taken by this run — and append
   those messages as user messages, then the user's message. Each is persisted at once.
3. Up to `max_steps` steps. A step: compact if over the threshold (history rewritten); stream
   the model (a `text-delta` event per chunk); persist the assistant message with its tool
   calls *before* any tool runs (the tool-call ledger); for each call emit `tool-call`, run the
   tool, emit `tool-result` and persist the tool message; emit `step-finish` with the step's
   usage; call `heartbeat()`; drain steering into user messages. The loop continues when the
   step had tool calls or steering arrived, and stops otherwise.
4. `finish` carries the last step's text, its finish reason and the usage summed over steps
   (compaction summaries included, since they are tokens this run spent).

Failures never raise out of `run_turn`:

- a tool that is unknown, gets bad arguments, or fails gives the model `{"error": "..."}` as
  its result; results longer than `tool_output_limit` characters are truncated;
- a `ModelError` persists the assistant message `Error: <message>`, emits an `error` event
  (instead of `finish`) and returns a TurnResult with `error` set.

Reaching `max_steps` while the model still wants tools: the tools of the last step have run and
their results are persisted (the transcript is valid), no further model call is made, and the
turn finishes with finishReason `tool-calls` and the last step's text — as the AI SDK's
`maxSteps` does. Steering not yet drained then stays queued for the next run.

Only `emit` and `heartbeat` exceptions (the caller's own, e.g. a cancel) propagate; the
transcript stays repairable in that case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from regina.config import Compaction
from regina.errors import ModelError, ReginaError
from regina.providers import ModelTarget
from regina.runtime import models as model_api
from regina.runtime.compaction import maybe_compact, message_chars, render_transcript
from regina.runtime.events import (
    ErrorEvent,
    Event,
    Finish,
    StepFinish,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from regina.runtime.messages import Message, assistant, dumps_result, for_model, tool_call, tool_result, user
from regina.runtime.session import Session
from regina.runtime.tools.base import Tool
from regina.runtime.tools.runner import InlineRunner, ToolRunner

__all__ = ["TurnResult", "run_turn", "SUMMARY_INSTRUCTIONS", "MAX_STEPS_REASON"]

log = logging.getLogger(__name__)

MAX_STEPS_REASON = "tool-calls"
"""finishReason of a turn that ran out of steps while the model still wanted tools."""

SUMMARY_INSTRUCTIONS = (
    "You compress conversations. Summarize the conversation below so that an assistant can "
    "continue it without the original: keep the user's goals and instructions, decisions made, "
    "facts learned, file names and contents that matter, tool results that matter, and open "
    "tasks. Be concise and factual; write only the summary."
)


@dataclass
class TurnResult:
    """What a turn produced: final text, summed usage, finish reason, and the error if any."""

    text: str
    usage: Usage
    finish_reason: str
    error: str | None = None
    steps: int = 0


@dataclass
class _Turn:
    """Per-turn state: the cached model-form history mirrors the session, appended in step."""

    session: Session
    system: list[Message]
    meta: dict[str, Any]
    model_msgs: list[Message] = field(default_factory=list)
    chars: int = 0
    unsaved: list[Message] = field(default_factory=list)

    def reload(self) -> None:
        msgs = self.session.messages
        self.model_msgs = for_model(msgs)
        self.chars = sum(message_chars(m) for m in msgs)

    def append(self, *msgs: Message, defer: bool = False) -> None:
        """Add messages to the request and the session. `defer` keeps them in memory until the
        next append, so the user's message and the model's answer are saved in one VFS write
        (one SQLite transaction less before the first model call)."""
        if self.meta:
            msgs = tuple({**m, **self.meta} for m in msgs)
        if defer:
            self.unsaved.extend(msgs)
        else:
            self.session.append(*self.unsaved, *msgs)
            self.unsaved.clear()
        self.model_msgs.extend(for_model(msgs))
        for m in msgs:
            self.chars += message_chars(m)

    def flush(self) -> None:
        """Save deferred messages now."""
        if self.unsaved:
            self.session.append(*self.unsaved)
            self.unsaved.clear()

    def request(self) -> list[Message]:
        return [*self.system, *self.model_msgs]


_INLINE = InlineRunner()


def _error_result(message: str) -> dict[str, str]:
    return {"error": message}


def _run_tool(tools: dict[str, Tool], name: str, args: dict[str, Any], runner: ToolRunner = _INLINE) -> Any:
    """Run one tool where `runner` puts it; every failure becomes `{"error": ...}` for the model."""
    tool = tools.get(name)
    if tool is None:
        return _error_result(f"unknown tool {name!r}; available tools: {', '.join(sorted(tools)) or 'none'}")
    if set(args) == {"_raw"}:
        return _error_result(f"arguments for tool {name!r} are not a valid JSON object: {args['_raw'][:200]}")
    try:
        return runner.run(tool, args)
    except ReginaError as exc:
        return _error_result(exc.message)
    except Exception as exc:  # a tool's own bug: report it to the model, keep the run going
        log.warning("tool %s failed", name, exc_info=True)
        return _error_result(f"tool {name!r} failed: {type(exc).__name__}: {exc}")


def _limit(result: Any, limit: int) -> tuple[Any, str]:
    """(result for the event, content for the model), truncated to `limit` characters."""
    content = dumps_result(result)
    if len(content) <= limit:
        return result, content
    cut = content[:limit] + f"\n…[truncated: {len(content) - limit} more characters]"
    return cut, cut


def _summarizer(target: ModelTarget, temperature: float | None, spent: list[Usage]) -> Callable[[list[Message]], str]:
    def summarize(older: list[Message]) -> str:
        text, usage = model_api.complete(
            target,
            [
                {"role": "system", "content": SUMMARY_INSTRUCTIONS},
                {"role": "user", "content": render_transcript(older)},
            ],
            temperature=temperature,
        )
        spent.append(usage)
        return text

    return summarize


def _maybe_compact(turn: _Turn, compaction: Compaction, summarize: Callable[[list[Message]], str]) -> None:
    if turn.chars // 4 <= compaction.threshold:
        return
    turn.flush()
    try:
        compacted = maybe_compact(turn.session.messages, compaction.threshold, compaction.keep_last_n, summarize)
    except ModelError as exc:
        log.warning("compaction skipped: %s", exc.message)
        return
    if compacted is not None:
        turn.session.rewrite(compacted)
        turn.reload()


def run_turn(
    *,
    target: ModelTarget,
    system_prompt: str,
    tools: dict[str, Tool],
    session: Session,
    user_message: str | None,
    emit: Callable[[Event], None],
    drain_steering: Callable[[], list[str]],
    max_steps: int = 10,
    temperature: float | None = None,
    compaction: Compaction | None = None,
    heartbeat: Callable[[], None] = lambda: None,
    tool_output_limit: int = 50_000,
    run_id: str | None = None,
    stream: bool = True,
    finish_unless_steered: Callable[[Finish], list[str]] | None = None,
    runner: ToolRunner = _INLINE,
) -> TurnResult:
    """Run one chat turn to its end; see the module docstring. Never raises ModelError.

    `finish_unless_steered(finish)` publishes the final event unless steering messages wait,
    which it then returns (the host does both in one Redis round trip); by default it is
    `drain_steering()` followed by `emit(finish)`. `runner` decides where tool calls execute
    (the worker passes a thread or process runner so no tool runs on its event loop).
    """
    session.repair()
    turn = _Turn(
        session=session,
        system=[{"role": "system", "content": system_prompt}] if system_prompt else [],
        meta={"runId": run_id} if run_id else {},
    )
    turn.reload()
    steered = [user(s) for s in drain_steering()]
    # Steering messages were taken out of Redis: save them at once. The user's own message can
    # wait for the answer (a step redelivered after a crash adds it again if it is missing).
    if steered:
        turn.append(*steered)
    if user_message is not None:
        turn.append(user(user_message), defer=True)
    if finish_unless_steered is None:

        def finish_unless_steered(final: Finish) -> list[str]:
            steered = drain_steering()
            if not steered:
                emit(final)
            return steered

    try:
        return _steps(
            turn,
            target,
            tools,
            emit,
            drain_steering,
            finish_unless_steered,
            max_steps,
            temperature,
            compaction,
            heartbeat,
            tool_output_limit,
            stream,
            runner,
        )
    finally:
        turn.flush()


def _steps(
    turn: _Turn,
    target: ModelTarget,
    tools: dict[str, Tool],
    emit: Callable[[Event], None],
    drain_steering: Callable[[], list[str]],
    finish_unless_steered: Callable[[Finish], list[str]],
    max_steps: int,
    temperature: float | None,
    compaction: Compaction | None,
    heartbeat: Callable[[], None],
    tool_output_limit: int,
    stream: bool,
    runner: ToolRunner = _INLINE,
) -> TurnResult:

    schemas = [t.schema() for t in tools.values()]
    spent: list[Usage] = []
    summarize = _summarizer(target, temperature, spent)
    total = Usage()
    text = ""
    reason = "stop"
    step = 0
    while step < max_steps:
        step += 1
        if compaction is not None:
            _maybe_compact(turn, compaction, summarize)
        parts: list[str] = []
        calls: list[model_api.ToolCallPart] = []
        step_usage = Usage()
        try:
            call = model_api.stream_completion if stream else model_api.call_completion
            for delta in call(target, turn.request(), schemas, temperature):
                if isinstance(delta, model_api.TextPart):
                    parts.append(delta.text)
                    emit(TextDelta(text_delta=delta.text))
                elif isinstance(delta, model_api.ToolCallPart):
                    calls.append(delta)
                else:
                    reason, step_usage = delta.reason, delta.usage
        except ModelError as exc:
            return _fail(turn, emit, exc, total, step, spent)
        text = "".join(parts)
        total = total + step_usage
        turn.append(assistant(text, [tool_call(c.id, c.name, c.args) for c in calls]))
        for c in calls:
            emit(ToolCallEvent(tool_call_id=c.id, tool_name=c.name, args=c.args))
            shown, content = _limit(_run_tool(tools, c.name, c.args, runner), tool_output_limit)
            emit(ToolResultEvent(tool_call_id=c.id, tool_name=c.name, result=shown))
            turn.append(tool_result(c.id, c.name, content))
        emit(StepFinish(finish_reason=reason, usage=step_usage))
        heartbeat()
        if step >= max_steps:
            break
        if not calls:
            # The model is done unless steering arrived meanwhile: one check-and-publish.
            final = Finish(finish_reason=reason, text=text, usage=_plus(total, spent))
            steered = finish_unless_steered(final)
            if not steered:
                return TurnResult(text=text, usage=final.usage, finish_reason=reason, steps=step)
            turn.append(*[user(s) for s in steered])
            continue
        steering = [user(s) for s in drain_steering()]
        if steering:
            turn.append(*steering)
    total = _plus(total, spent)
    emit(Finish(finish_reason=reason, text=text, usage=total))
    return TurnResult(text=text, usage=total, finish_reason=reason, steps=step)


def _plus(total: Usage, spent: list[Usage]) -> Usage:
    """The turn's usage plus what compaction summaries spent."""
    for u in spent:
        total = total + u
    return total


def _fail(
    turn: _Turn, emit: Callable[[Event], None], exc: ModelError, total: Usage, step: int, spent: list[Usage]
) -> TurnResult:
    total = _plus(total, spent)
    text = f"Error: {exc.message}"
    turn.append(assistant(text))
    emit(ErrorEvent(error=exc.message))
    return TurnResult(text=text, usage=total, finish_reason="error", error=exc.message, steps=step)
