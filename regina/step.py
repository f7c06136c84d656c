"""One chat step of an attached instance, from its start to its end.

The start takes the run (epoch fence, seq, `running`, steering) in one script; the step builds
the run's context and budget and runs the agent loop; the end resets the idle timer (unless the
finish script did). Steering a run took and never saved to its transcript goes back to the
instance in the script that ends the run (`RunPublisher.publish`'s `give_back`): here when the
step ends it without the model (an answer already saved, an abandoned run), in
`InstanceHost.end_failed` when the step failed; a step that stops without ending its run (a stale
owner, a worker shutting down) gives nothing back: its redelivery takes it again from the run's
steering journal. The journal flush that fences a tool call lives here too. `InstanceHost` holds
the instances and calls `run`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from regina import activation
from regina.attached import Active, FailedStep
from regina.clock import redis_now
from regina.config import Settings
from regina.durable_run import DurableRun
from regina.errors import StaleEpoch
from regina.journal import Journal, JournalVFS
from regina.providers import ModelTarget, resolve_model_target
from regina.run_watch import RunWatch
from regina.runs.context import InterrupterFactory, RunContext, budget_for
from regina.runs.steering import encode_all
from regina.runs.store import Begun, RunStore
from regina.runs.stream import RunPublisher
from regina.runtime.events import ToolDegraded
from regina.runtime.loop import TurnSpec, run_turn
from regina.runtime.sink import CANCELLED, Steer

log = logging.getLogger("regina.host")


@dataclass
class StepRunner:
    """Runs the chat steps of the instances a member holds (see the module docstring)."""

    settings: Settings
    r: redis.Redis
    runs: RunStore
    journal: Journal | None
    running: dict[str, RunContext]  # the member's runs in progress, by run id (shared with the host)
    interrupter_factory: InterrupterFactory | None
    #: Cancels announced for runs not in `running` yet (run id → when), kept by the host's
    #: `cancel_local`: a step that registers its run after the announcement starts cancelled.
    cancelled_early: dict[str, float] = field(default_factory=dict)

    def run(self, act: Active, run_id: str, message: str | None, stream: bool, begun: Begun | None = None) -> None:
        """Run one step of `act` (its lock held): begin, the loop, the end. `begun`: the run was
        started by the take of its step, with the instance's current epoch (regina/host.py)."""
        instance_id = act.instance_id
        act.parked = False
        act.last_used = time.monotonic()
        target, begun = self._start(act, run_id, begun)
        if begun.kind == "stale":
            raise StaleEpoch(f"instance {instance_id} moved to another member")
        if begun.kind == "ended":
            # A redelivered step whose run already ended (its ack was lost), a queued run
            # cancelled before it started, or a run whose record expired: never run it twice.
            log.info("step for run %s dropped: run %s", run_id, begun.previous_status or "unknown or expired")
            return
        window = self.settings.stream_batch_ms / 1000 if stream else None  # deltas batched
        publisher = RunPublisher(
            self.r,
            run_id,
            instance_id,
            self.settings.run_retention,
            begun.seq,
            not stream,
            window,
            act.epoch,
            self.settings.limits.max_run_events,
        )
        if self.journal is not None and isinstance(act.vfs, JournalVFS):
            publisher.journal = act.vfs  # the terminal script ships the run's last changes
        # An unreadable transcript raises: the run ends failed and the steering it took goes back
        # (regina/host.py `end_failed`).
        left = not_saved(begun.earlier, act.session.messages, run_id)
        # Only a redelivered step (its run already marked running) can have its message saved.
        redelivered = begun.previous_status == "running"
        if redelivered and (child := self.runs.cancel_orphaned_delegate(run_id)):
            log.warning("run %s: the delegated run %s its crashed attempt waited for is cancelled", run_id, child)
        if redelivered and message_saved(message, begun.earlier, act.session.messages, run_id):
            message = None  # redelivered after a crash: the message is already in the history
            answer = activation.answer_of(act.session.messages, run_id)
            # ... and its answer too: finish with it, do not ask again, unless the crashed attempt
            # had taken steering after that answer (its finish took it): then the model answers it.
            if answer is not None and not left:
                self.flush(act)
                usage = begun.spent.usage.as_dict()  # what the crashed attempts spent, counted once
                finish = {"type": "finish", "finishReason": "stop", "text": answer, "usage": usage}
                publisher.publish(finish, give_back=encode_all(begun.steered))  # for the next run
                return
        if begun.attempts > self.settings.limits.max_run_deliveries and not begun.cancel_requested:
            self._abandon(act, publisher, begun, left)
            return
        d = act.definition
        budget = budget_for(d.budget_settings(self.settings), begun.instance_tokens, begun.elapsed)
        steered = left + begun.steered
        ctx = DurableRun(
            self.r,
            instance_id,
            run_id,
            publisher,
            budget,
            steered,
            self.interrupter_factory,
            journal_seen=len(begun.earlier) + len(begun.steered),
            progress=dataclasses.replace(begun.spent),  # the loop goes on from the crashed attempts'
        )
        # The open touched the instance and the start read the cancel flag just now: the first
        # heartbeat is due a second from here.
        act.last_touch = time.monotonic()
        ctx.touch_gate = lambda: self.touch_due(act)
        ctx.bind(act.fence, lambda before_tool, progress: self.flush(act, before_tool, (run_id, progress)))
        if begun.cancel_requested:
            ctx.cancel.cancel(CANCELLED)
        # The delegate tool reads the run from `act`; a dropped MCP server is this run's event.
        act.run_id = run_id
        act.tools.bind_run(lambda server, error: ctx.emit(ToolDegraded(server=server, error=error)))
        spec = TurnSpec(
            target=target,
            system_prompt=act.system_prompt,
            tools=act.tools.for_step(),
            tools_for_step=act.tools.for_step,
            max_steps=d.max_steps or self.settings.defaults.max_steps,
            temperature=d.temperature,
            compaction=d.compaction_settings(self.settings),
            tool_output_limit=self.settings.limits.max_tool_output_chars,
            stream=stream,
            runner=act.runner,
        )
        watch = ctx.watch = RunWatch(instance_id, run_id, spec.target.provider, d.model, stream, act.tools.offers)
        self.running[run_id] = ctx
        if self.cancelled_early.pop(run_id, None) is not None:  # announced since its start
            ctx.cancel.cancel(CANCELLED)
        ctx.start_clock()
        try:
            watch.result = run_turn(spec, act.session, message, ctx)
        except BaseException:
            # Its failed end counts what it spent, writes the events it published and did not
            # write (a sync chat's are buffered) and gives back the steering it took and never
            # saved (regina/host.py `end_failed`).
            act.failed = FailedStep(run_id, ctx.progress, publisher)
            raise
        finally:
            ctx.stop_clock()
            watch.done()
            self.running.pop(run_id, None)
        if publisher.ended:  # its finish script reset the idle timer
            act.last_touch = time.monotonic()
        else:
            self.touch(act)
        act.last_used = time.monotonic()

    def _start(self, act: Active, run_id: str, begun: Begun | None) -> tuple[ModelTarget, Begun]:
        """The step's model target, and its run started (unless its take did that)."""
        # Resolved before steering is taken for the run (unless its take started it: a failure
        # then ends the run failed, and what it took goes back, regina/host.py `end_failed`).
        target = resolve_model_target(act.definition.model, act.definition.provider, self.settings)
        if begun is None:
            # One round trip: our epoch still current? events already published? mark running,
            # and take the steering messages that wait for this run.
            begun = self.runs.begin(act.instance_id, run_id, act.epoch)
        return target, begun

    def flush(self, act: Active, before_tool: bool = False, progress: tuple[str, str] | None = None) -> None:
        """Ship the journal (with nothing pending, a fence check), and record `progress` (run id,
        `RunProgress.encode()`; '' = unchanged) on that run in the same script. With `storage.type`
        null there is no journal: only a tool call checks the fence first (terminal events are
        fenced anyway), recording the progress in the same round trip."""
        if progress is not None and not progress[1]:
            progress = None
        if self.journal is not None and isinstance(act.vfs, JournalVFS):
            self.journal.flush(act.instance_id, act.epoch, act.vfs, progress)
        elif before_tool:
            if progress is not None:
                if not self.runs.record_progress(act.instance_id, act.epoch, *progress):
                    raise act.fence.stale("tool call")
            elif not act.fence.current():
                raise act.fence.stale("tool call")

    def _abandon(self, act: Active, publisher: RunPublisher, begun: Begun, left: list[Steer]) -> None:
        """End a run delivered more than `limits.maxRunDeliveries` times (each of its workers died
        while running it) `failed`, with what its attempts spent; its transcript is repaired (a
        tool call cut short gets its "outcome unknown" result) and the steering it took goes back
        to the instance for the next run."""
        limit = self.settings.limits.max_run_deliveries
        log.warning(
            "run %s abandoned: delivered %d times, limits.maxRunDeliveries is %d",
            publisher.run_id,
            begun.attempts,
            limit,
        )
        try:
            act.session.repair()  # shipped by the error's terminal script
        except Exception:  # an unreadable transcript: the next run's start repairs it or says why
            log.warning("run %s: repairing the transcript failed", publisher.run_id, exc_info=True)
        error = {
            "type": "error",
            "error": abandoned_text(begun.attempts - 1, limit),
            "usage": begun.spent.usage.as_dict(),
        }
        publisher.publish(error, give_back=encode_all(left + begun.steered))

    def touch(self, act: Active) -> None:
        """Reset the idle timer from a running loop, at most once a second (timers are in seconds)."""
        if self.touch_due(act):
            act.fence.set(lastActive=redis_now(self.r))

    @staticmethod
    def touch_due(act: Active) -> bool:
        now = time.monotonic()
        if now - act.last_touch < 1.0:
            return False
        act.last_touch = now
        return True


def abandoned_text(crashed: int, limit: int) -> str:
    """The error a run ends with when its step was delivered more than `limit` times."""
    times = "once" if crashed == 1 else f"{crashed} times"
    return (
        f"run abandoned: the worker running it stopped {times} (limits.maxRunDeliveries is {limit}); "
        "it is not run again"
    )


def message_saved(message: str | None, earlier: list[Steer], history: list[dict[str, Any]], run_id: str) -> bool:
    """Whether a redelivered step's own message is in the history already. Any message of the run
    but a user one (an answer, a tool call or result) says so: the message is saved with the
    run's first model answer at the latest. Its user messages alone may be steering the crashed
    attempt saved at its start (`earlier`), before its deferred message: those are not it."""
    mine = [m for m in history if m.get("runId") == run_id]
    if not mine:
        return False
    if any(m.get("role") != "user" for m in mine):
        return True
    _, rest = _match(earlier, [m.get("content") for m in mine])
    return message is None or message in rest


def not_saved(earlier: list[Steer], history: list[dict[str, Any]], run_id: str) -> list[Steer]:
    """Steering a crashed attempt of this run took but did not save to the history."""
    if not earlier:  # the common case: no walk over the whole history
        return []
    saved = [m.get("content") for m in history if m.get("role") == "user" and m.get("runId") == run_id]
    return _match(earlier, saved)[0]


def _match(steers: list[Steer], saved: list[Any]) -> tuple[list[Steer], list[Any]]:
    """(the steers not among the `saved` user texts, the texts no steer matched): each text
    matches one steer."""
    rest, unmatched = list(saved), []
    for steer in steers:
        if steer.message in rest:
            rest.remove(steer.message)
        else:
            unmatched.append(steer)
    return unmatched, rest
