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
   (compaction summaries included, since they are tokens this run spent). A call the provider
   told no usage of — one cut short after the model began answering (a cancel, the budget's
   clock, a stream failing), or a provider that reports none — counts compaction's estimate,
   characters / 4, so the token budgets see it.

Failures never raise out of `run_turn`:

- a tool that is unknown, gets bad arguments, or fails gives the model `{"error": "..."}` as
  its result; results longer than `tool_output_limit` characters are truncated;
- a `ModelError` persists the assistant message `Error: <message>`, emits an `error` event
  (instead of `finish`) and returns a TurnResult with `error` set.

A run redelivered after its worker died starts from the sink's `progress` (the steps and tokens
its crashed attempt recorded): they count against `max_steps` and the token budgets and are part
of the usage it reports. The loop updates `progress` after every model call, compaction summaries
included, and calls `heartbeat()` after a summary too (the worker's sink records the progress
with it).

Reaching `max_steps` while the model still wants tools: the tools of the last step have run and
their results are persisted (the transcript is valid), no further model call is made, and the
turn finishes with finishReason `tool-calls` and the last step's text — as the AI SDK's
`maxSteps` does. Steering not yet drained then stays queued for the next run.

A cancel (the sink's `CancelToken`) or a budget stops the turn before the next model call or
tool, or interrupts the one in progress: an interrupted model call leaves no assistant message;
an interrupted tool gets `{"error": "cancelled: …"}` as its result and so do the calls of that
step that had not run yet, so every tool call keeps its result. The turn then finishes with
finishReason `cancelled` or `budget` (its text names the budget); steering not yet taken stays
queued.

Token budgets are also kept within a step: the model call's answer is capped (max_tokens) to
what the tightest token budget leaves once the prompt (estimated as compaction does, the tool
schemas included) is sent, no
call is made when the estimate alone leaves nothing, and a step that went past a token budget, or
whose answer the cap cut (`length`), ends the turn `budget` after its tools ran; an answer that
ended the turn is saved and comes first in the finish text, before the note naming the budget.
No token budget, no cap: the request is as it was.

The loop reaches its run only through `RunSink` (events, steering, heartbeat, cancel, budget);
what to run comes as a `TurnSpec`. Only the sink's own exceptions propagate; the transcript
stays repairable in that case.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from regina.config import Compaction
from regina.errors import ModelError
from regina.providers import ModelTarget
from regina.runtime import models as model_api
from regina.runtime.compaction import maybe_compact, message_chars, render_transcript
from regina.runtime.events import (
    ErrorEvent,
    Finish,
    SteerApplied,
    StepFinish,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    Usage,
)
from regina.runtime.messages import Message, assistant, for_model, model_json, tool_call, tool_result, user
from regina.runtime.session import Session
from regina.runtime.sink import BUDGET, RunCancelled, RunSink, Steer
from regina.runtime.tool_call import INLINE, BothInterrupters, error_result, limit_output, run_tool
from regina.runtime.tools.base import Tool
from regina.runtime.tools.runner import ToolRunner

__all__ = ["TurnResult", "TurnSpec", "run_turn", "SUMMARY_INSTRUCTIONS", "MAX_STEPS_REASON"]

log = logging.getLogger(__name__)

MAX_STEPS_REASON = "tool-calls"
"""finishReason of a turn that ran out of steps while the model still wanted tools."""

SUMMARY_INSTRUCTIONS = (
    "You compress conversations. Summarize the conversation below so that an assistant can "
    "continue it without the original: keep the user's goals and instructions, decisions made, "
    "facts learned, file names and contents that matter, tool results that matter, and open "
    "tasks. Be concise and factual; write only the summary."
)


@dataclass(frozen=True)
class TurnSpec:
    """What to run: the model, the prompt, the tools and the turn's limits."""

    target: ModelTarget
    system_prompt: str
    tools: dict[str, Tool]
    max_steps: int = 10
    temperature: float | None = None
    compaction: Compaction | None = None
    tool_output_limit: int = 50_000
    stream: bool = True
    runner: ToolRunner = INLINE
    """Where tool calls execute (the worker passes a thread or process runner)."""
    tools_for_step: Callable[[], dict[str, Tool]] | None = None
    """Asked for the tools before every step when set (MCP servers may reconnect or change their
    tool lists mid-turn); `tools` is then only the first step's."""


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
    sink: RunSink
    #: Whether the model call uses each message's JSON (`model_api.keeps_encoded_messages`).
    encode: bool = False
    model_msgs: list[Message] = field(default_factory=list)
    #: `model_json` of each of `model_msgs` (the session's, then this turn's own), if `encode`.
    model_encoded: list[bytes | None] = field(default_factory=list)
    chars: int = 0
    unsaved: list[Message] = field(default_factory=list)

    def reload(self) -> None:
        model, self.chars = self.session.model_view()
        self.model_msgs = list(model)  # this turn's own: deferred messages join it before the session
        self.model_encoded = list(self.session.model_json()) if self.encode else []

    def append(self, *msgs: Message, defer: bool = False, behind: bool = False) -> None:
        """Add messages to the request and the session. `defer` keeps them in memory until the
        next append, so the user's message and the model's answer are saved in one VFS write
        (one SQLite transaction less before the first model call). `behind`: the answer that
        may end the run: journaled now, written to the local file after the run's end is in
        Redis (`Session.append`), so the client does not wait for that commit."""
        if self.meta:
            msgs = tuple({**m, **self.meta} for m in msgs)
        if defer:
            self.unsaved.extend(msgs)
        else:
            self.session.append(*self.unsaved, *msgs, behind=behind)
            self.unsaved.clear()
        model = for_model(msgs)
        self.model_msgs.extend(model)
        if self.encode:
            self.model_encoded.extend(model_json(m) for m in model)
        for m in msgs:
            self.chars += message_chars(m)

    def steer(self, steered: list[Steer]) -> None:
        """Append steering messages as user messages and emit their receipts once saved."""
        if not steered:
            return
        self.append(*[user(s.message) for s in steered])
        for s in steered:
            if s.steer_id:
                self.sink.emit(SteerApplied(steer_id=s.steer_id, message=s.message))

    def flush(self) -> None:
        """Save deferred messages now."""
        if self.unsaved:
            self.session.append(*self.unsaved)
            self.unsaved.clear()

    def request(self) -> list[Message]:
        return [*self.system, *self.model_msgs]

    @functools.cached_property
    def system_chars(self) -> int:
        """Characters of the system messages (part of every request's prompt)."""
        return sum(message_chars(m) for m in self.system)

    @functools.cached_property
    def system_encoded(self) -> list[bytes | None]:
        """`model_json` of the system messages, once per turn (they stay the same in every step)."""
        return [model_json(m) for m in self.system]

    def encoded(self) -> list[bytes | None] | None:
        """`model_json` of each message of `request()`, in its order (None unless `encode`)."""
        return [*self.system_encoded, *self.model_encoded] if self.encode else None


Summarize = Callable[[list[Message], Usage], str]
"""Write the summary of the older messages, given what the run spent before it (`_summarizer`)."""


def _summarizer(target: ModelTarget, temperature: float | None, spent: list[Usage], sink: RunSink) -> Summarize:
    def summarize(older: list[Message], used: Usage) -> str:
        request = [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": render_transcript(older)},
        ]
        # Under a token budget the summary's answer is capped to what the budget leaves after its
        # prompt, as a step's is (`_output_cap`); one the budget cannot pay for is not asked for,
        # and one the cap cut is not used (a cut summary would replace the history it lost).
        cap, run_tokens = None, used.prompt_tokens + used.completion_tokens
        left = sink.budget.tokens_left(run_tokens)
        if left is not None:
            prompt = sum(message_chars(m) for m in request) // 4
            if left - prompt <= 0:
                raise ModelError(f"the token budget leaves nothing for a summary (its prompt is about {prompt})")
            cap = model_api.output_cap(target, left - prompt)
        # A model call like the step's own: a cancel or the budget's clock cuts it short
        # (RunCancelled, or the provider error it surfaces as). Only the call: the rewrite of the
        # transcript after it must never be cut in the middle.
        with sink.cancel.interruptible(sink.interrupter()):
            text, usage, reason = model_api.complete(target, request, temperature=temperature, max_tokens=cap)
        spent.append(usage)
        if cap is not None and reason == "length":
            raise ModelError(f"the model's summary was cut at {cap} tokens, what the token budget left for it")
        if not text.strip():  # a filtered or empty answer: replacing the history by it loses it
            raise ModelError("the model's summary was empty")
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


def run_turn(spec: TurnSpec, session: Session, user_message: str | None, sink: RunSink) -> TurnResult:
    """Run one chat turn to its end; see the module docstring. Never raises ModelError."""
    session.repair()
    run_id = sink.run_id
    turn = _Turn(
        session=session,
        system=[{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else [],
        meta={"runId": run_id} if run_id else {},
        sink=sink,
        encode=model_api.keeps_encoded_messages(spec.target),
    )
    turn.reload()
    # Steering messages were taken out of Redis: save them at once. The user's own message can
    # wait for the answer (a step redelivered after a crash adds it again if it is missing).
    turn.steer(sink.drain_steering())
    if user_message is not None:
        turn.append(user(user_message), defer=True)
    try:
        return _steps(turn, spec)
    finally:
        turn.flush()


def _steps(turn: _Turn, spec: TurnSpec) -> TurnResult:
    sink = turn.sink
    tools = spec.tools
    schemas = [t.shared_schema() for t in tools.values()]
    spent: list[Usage] = []
    summarize = _summarizer(spec.target, spec.temperature, spent, sink)
    # A run redelivered after its worker died goes on from what its crashed attempt recorded:
    # those steps and tokens count against maxSteps and the token budgets, and are in its usage.
    progress = sink.progress
    total = progress.usage
    step = progress.steps
    text = ""
    reason = MAX_STEPS_REASON if step >= spec.max_steps else "stop"
    while step < spec.max_steps:
        step += 1
        stop = _stop_reason(sink, _plus(total, spent))
        if stop is not None:
            return _stop(turn, stop, text, _plus(total, spent), step - 1)
        try:  # reconnecting an MCP server may wait: a cancel or the budget's clock cuts it short
            with sink.cancel.interruptible(sink.interrupter()):
                spec, schemas = _current_tools(spec, schemas)
        except RunCancelled as exc:
            return _stop(turn, (exc.reason, exc.message), text, _plus(total, spent), step - 1)
        cap, stop = _prepare_call(turn, spec, summarize, total, spent)
        if stop is not None:
            return _stop(turn, stop, text, _plus(total, spent), step - 1)
        try:
            text, calls, reason, step_usage = _call_model(turn, spec, schemas, spent, cap)
        except ModelError as exc:
            if sink.cancel.reason is not None:  # the interruption surfaced as a provider error
                return _stop(turn, (sink.cancel.reason, sink.cancel.message), text, _plus(total, spent), step)
            return _fail(turn, exc, total, step, spent)
        except RunCancelled as exc:
            # The model's partial answer is dropped: no assistant message, so no orphan call.
            return _stop(turn, (exc.reason, exc.message), text, _plus(total, spent), step)
        total = total + step_usage
        progress.steps, progress.usage = step, _plus(total, spent)  # recorded with the step's next write
        turn.append(assistant(text, [tool_call(c.id, c.name, c.args) for c in calls]), behind=not calls)
        stopped = _run_tools(turn, spec, calls)
        sink.emit(StepFinish(finish_reason=reason, usage=step_usage))
        # ... or a step past a token budget ends it (its answer is saved)
        stopped = stopped or _passed(sink, _plus(total, spent), cap, reason)
        if stopped is not None:
            return _stop(turn, stopped, text, _plus(total, spent), step, "" if calls else text)
        sink.heartbeat()
        if step >= spec.max_steps:
            break
        if not calls:
            # The model is done unless steering arrived meanwhile: one check-and-publish.
            final = Finish(finish_reason=reason, text=text, usage=_plus(total, spent))
            steered = sink.finish_unless_steered(final)
            if not steered:
                return TurnResult(text=text, usage=final.usage, finish_reason=reason, steps=step)
            turn.steer(steered)
            continue
        turn.steer(sink.drain_steering())
    total = _plus(total, spent)
    sink.emit(Finish(finish_reason=reason, text=text, usage=total))
    return TurnResult(text=text, usage=total, finish_reason=reason, steps=step)


def _compacted(
    turn: _Turn, spec: TurnSpec, summarize: Summarize, total: Usage, spent: list[Usage]
) -> tuple[str, str] | None:
    """Compact the conversation when it is due; the reason to stop when the summary spent what
    was left of the token budget (a summary is a model call too: its tokens count before the
    step's own call), or when the run was cancelled while the model wrote it."""
    if spec.compaction is None:
        return None
    summaries, used = len(spent), _plus(total, spent)
    try:
        _maybe_compact(turn, spec.compaction, lambda older: summarize(older, used))
    except RunCancelled as exc:  # cancelled (or out of time) while the model wrote the summary
        return exc.reason, exc.message
    if len(spent) == summaries:
        return None
    # The summary was billed: in the run's progress now, recorded by the heartbeat (when due)
    # before the step's own model call, during which the worker may die.
    turn.sink.progress.usage = _plus(total, spent)
    turn.sink.heartbeat()
    return _stop_reason(turn.sink, _plus(total, spent))


def _current_tools(spec: TurnSpec, schemas: list[dict[str, Any]]) -> tuple[TurnSpec, list[dict[str, Any]]]:
    """The spec and tool schemas for the next step: new ones only when the tools changed."""
    fresh = spec.tools if spec.tools_for_step is None else spec.tools_for_step()
    if fresh is spec.tools:
        return spec, schemas
    return dataclasses.replace(spec, tools=fresh), [t.shared_schema() for t in fresh.values()]


def _prepare_call(
    turn: _Turn, spec: TurnSpec, summarize: Summarize, total: Usage, spent: list[Usage]
) -> tuple[int | None, tuple[str, str] | None]:
    """Compact the conversation when due, then size the model call (`_output_cap`): (its
    max_tokens, the reason to stop instead of calling)."""
    stop = _compacted(turn, spec, summarize, total, spent)
    if stop is not None:
        return None, stop
    return _output_cap(turn, spec, _plus(total, spent))


def _output_cap(turn: _Turn, spec: TurnSpec, used: Usage) -> tuple[int | None, tuple[str, str] | None]:
    """(the next model call's max_tokens, the reason to stop instead of calling).

    Under a token budget the answer may have what the tightest budget leaves once the prompt is
    sent — the prompt estimated as compaction does, characters / 4, the system prompt and the
    tool schemas included (providers count both; an estimate still, which `_passed` checks
    after the step). None as
    max_tokens when no token budget applies, or when the model could not answer more anyway:
    the request is then as it would be without a budget."""
    budget = turn.sink.budget
    run_tokens = used.prompt_tokens + used.completion_tokens
    left = budget.tokens_left(run_tokens)
    if left is None:
        return None, None
    prompt = (turn.chars + turn.system_chars + sum(t.schema_chars() for t in spec.tools.values())) // 4
    if left - prompt <= 0:
        return None, (BUDGET, budget.exceeded(run_tokens, prompt) or "")
    return model_api.output_cap(spec.target, left - prompt), None


def _passed(sink: RunSink, used: Usage, cap: int | None, reason: str) -> tuple[str, str] | None:
    """("budget", text) that ends the run after a step that went past a token budget, or whose
    answer the budget's cap cut (finish reason `length` with a cap sent); None otherwise. A step
    that used a budget up exactly with a whole answer has not passed it."""
    run_tokens = used.prompt_tokens + used.completion_tokens
    passed = sink.budget.passed(run_tokens)
    if passed is None and cap is not None and reason == "length":
        passed = sink.budget.answer_cut(run_tokens, cap)
    return None if passed is None else (BUDGET, passed)


def _call_model(
    turn: _Turn, spec: TurnSpec, schemas: list[dict[str, Any]], spent: list[Usage], cap: int | None = None
) -> tuple[str, list[model_api.ToolCallPart], str, Usage]:
    """One model call, interruptible by a cancel: (text, tool calls, finish reason, usage);
    `cap`: the answer's max_tokens (a token budget's, see `_output_cap`).

    A call cut short once the model had begun answering (a cancel, the budget's clock, a
    provider failing mid-stream) was billed but never told its usage: its estimate goes to
    `spent`, so the run's usage and its budgets count it."""
    sink = turn.sink
    parts: list[str] = []
    calls: list[model_api.ToolCallPart] = []
    reason, usage = "stop", Usage()
    call = model_api.stream_completion if spec.stream else model_api.call_completion
    try:
        with sink.cancel.interruptible(sink.interrupter()):
            request, encoded = turn.request(), turn.encoded()
            for delta in call(spec.target, request, schemas, spec.temperature, encoded=encoded, max_tokens=cap):
                if isinstance(delta, model_api.TextPart):
                    parts.append(delta.text)
                    sink.emit(TextDelta(text_delta=delta.text))
                elif isinstance(delta, model_api.ToolCallPart):
                    calls.append(delta)
                else:
                    reason, usage = delta.reason, delta.usage
    except (RunCancelled, ModelError):
        if parts or calls:
            spent.append(_estimated_usage(turn, parts, calls))
        raise
    if (parts or calls) and not (usage.prompt_tokens and usage.completion_tokens):
        guess = _estimated_usage(turn, parts, calls)  # a provider that reports no usage, or half
        usage = Usage(
            prompt_tokens=usage.prompt_tokens or guess.prompt_tokens,
            completion_tokens=usage.completion_tokens or guess.completion_tokens,
        )
    return "".join(parts), calls, reason, usage


def _estimated_usage(turn: _Turn, parts: list[str], calls: list[model_api.ToolCallPart]) -> Usage:
    """A call's usage by compaction's estimate, characters / 4 (at least 1 each): what the
    provider did not tell still counts against the token budgets."""
    answered = sum(len(p) for p in parts) + sum(len(c.name) + len(c.raw) for c in calls)
    return Usage(prompt_tokens=max(1, turn.chars // 4), completion_tokens=max(1, answered // 4))


def _run_tools(turn: _Turn, spec: TurnSpec, calls: list[model_api.ToolCallPart]) -> tuple[str, str] | None:
    """Run a step's tool calls in order; on a cancel, the rest get a cancelled result.

    Returns (finishReason, message) when the run was stopped, else None.
    """
    sink = turn.sink
    stopped: tuple[str, str] | None = None
    for c in calls:
        sink.emit(ToolCallEvent(tool_call_id=c.id, tool_name=c.name, args=c.args))
        started = stopped is None
        if started:
            try:
                with sink.cancel.interruptible(_tool_interrupter(turn, spec, c.name)):
                    result = run_tool(spec.tools, c.name, c.args, spec.runner)
                sink.cancel.check()  # a runner that was cancelled returned an error result
            except RunCancelled as exc:
                stopped = (exc.reason, exc.message)
        if stopped is not None:
            result = error_result(_cancelled_text(stopped[1], started))
        shown, content = limit_output(result, spec.tool_output_limit)
        sink.emit(ToolResultEvent(tool_call_id=c.id, tool_name=c.name, result=shown))
        turn.append(tool_result(c.id, c.name, content))
    return stopped


def _cancelled_text(message: str, started: bool) -> str:
    """A cancelled call's result. One the run had started may have done some or all of its work:
    a tool in a thread cannot be stopped (it is abandoned and may still complete), a process or
    an MCP server may have acted before the stop. The model must not take it for not run."""
    if not started:
        return f"cancelled: {message}; the tool was not run"
    return f"cancelled while the tool ran: {message}; it was stopped, or it may still complete: its effects are unknown"


def _tool_interrupter(turn: _Turn, spec: TurnSpec, name: str) -> Callable[[], None]:
    """Cut a running tool short: its runner stops the thread or process call; a tool that runs
    on the loop itself (inline) is interrupted like a model call."""
    tool = spec.tools.get(name)
    here = turn.sink.interrupter() if tool is not None and (tool.inline or spec.runner is INLINE) else None
    if here is None:
        return spec.runner.cancel
    return BothInterrupters(spec.runner.cancel, here)


def _stop_reason(sink: RunSink, used: Usage) -> tuple[str, str] | None:
    """(finishReason, text) when the run must not call the model again: cancelled or a budget."""
    if sink.cancel.reason is not None:
        return sink.cancel.reason, sink.cancel.message
    exceeded = sink.budget.exceeded(used.prompt_tokens + used.completion_tokens)
    return (BUDGET, exceeded) if exceeded else None


def _stop(turn: _Turn, stop: tuple[str, str], text: str, total: Usage, step: int, answer: str = "") -> TurnResult:
    """End the turn early (cancel or budget); steering not taken stays queued.

    A budget's text names the budget. After a step whose answer would have ended the run
    (`answer`: no tool calls), that answer comes first: it is saved in the transcript and the
    next run's model builds on it, and a sync chat or a delegating agent sees only this text —
    dropping it would hide what the run paid for (stream clients had it as deltas)."""
    reason, message = stop
    if reason != BUDGET:
        final_text = text
    else:
        final_text = f"{answer}\n\n{message}" if answer else message
    turn.flush()  # the user's message is saved before the end is told (its script ships it)
    turn.sink.emit(Finish(finish_reason=reason, text=final_text, usage=total))
    return TurnResult(text=final_text, usage=total, finish_reason=reason, steps=step)


def _plus(total: Usage, spent: list[Usage]) -> Usage:
    """The turn's usage plus what compaction summaries spent."""
    for u in spent:
        total = total + u
    return total


def _fail(turn: _Turn, exc: ModelError, total: Usage, step: int, spent: list[Usage]) -> TurnResult:
    total = _plus(total, spent)
    text = f"Error: {exc.message}"
    turn.append(assistant(text))
    turn.sink.emit(ErrorEvent(error=exc.message, usage=total))
    return TurnResult(text=text, usage=total, finish_reason="error", error=exc.message, steps=step)
