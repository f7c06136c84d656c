"""`DurableRun`: a run's `RunContext` that is fenced and makes what it tells the client durable.

On top of `regina.run_watch.WatchedRun` (a `RunContext`: events, steering, heartbeat, cancel):

- before a tool call's event (so before the tool runs: the tool-call ledger) and at the end of a
  step that ran tools (its results and file changes), the instance's journal is shipped
  (regina/journal.py) by a fenced script; the run's terminal script ships the rest in the same
  round trip as the terminal event: whatever the client is told, every tool call that may start
  and every tool that completed is in Redis first;
- a buffered run (a sync chat: its events wait in the publisher, to go out with its end) writes
  its events out at every step boundary that is not its end: at the end of a step that ran tools
  in the same script as that step's journal flush (`RunPublisher.write_pending`, no round trip
  more; with no journal it is the step's one write), and with each `steer-applied` receipt (a
  round trip of its own). A chat that makes no tool call and takes no steer still writes its
  events once, with its end; the followers of a sync chat (`GET /runs/<id>/events`, a chat
  answered 202) see each step as it ends;
- the run's progress (the steps and tokens of its completed model calls, `RunProgress`) goes in
  its record with those flushes when it changed: a step redelivered after this worker died goes
  on counting its budgets from there, and its usage includes what this attempt spent. Every model
  answer is recorded by the step's first write after it: the flush before its first tool call; for
  a streamed step without tools its `step-finish`, written with the journal (the answer) and the
  progress in one script; for a sync one the heartbeat after the model call (`_HEARTBEAT`, when
  it is due), else the run's end. Only a worker dying between the answer and that write loses it;
- steering drains (in their take script) and the heartbeat check the owner's epoch (fencing.py);
  run events are fenced by the publisher itself.

Any of these finding the epoch stale raises StaleEpoch: the step stops at once and the host lets
go of the instance.
"""

from __future__ import annotations

from collections.abc import Callable

from regina.fencing import Fence
from regina.run_watch import WatchedRun
from regina.runtime.events import Event, ToolCallEvent


class DurableRun(WatchedRun):
    """A RunContext whose owner may lose the instance at any moment (see the module docstring)."""

    fence: Fence
    flush: Callable[[bool, str], None]
    _tools_ran = False  # a tool ran since the last flush

    def bind(self, fence: Fence, flush: Callable[[bool, str], None]) -> DurableRun:
        """Attach the owner's fence and its journal flush (`flush(before_tool, progress)`, a fence
        check too; `progress` '' when unchanged); call after setting `touch_gate`: the heartbeat
        then checks the epoch when it touches."""
        self.fence = fence
        self.flush = flush
        gate = self.touch_gate

        def fenced_gate() -> bool:
            if not gate():
                return False
            if not fence.current():
                raise fence.stale("heartbeat")
            return True

        self.touch_gate = fenced_gate
        return self

    def emit(self, event: Event, hold: bool = False) -> None:
        if isinstance(event, ToolCallEvent):
            self._tools_ran = True
            self._flush_with_progress(True)
        elif event.type == "step-finish" and self._tools_ran:
            # After a step's tools: their results and file changes are durable before the model
            # is asked again, so a later death leaves no completed tool "outcome unknown".
            self._tools_ran = False
            if self.publisher.buffered:  # the step's events go out with that write
                super().emit(event)
                self._flush_with_progress(False, with_events=True)
                return
            self._flush_with_progress(False)
        elif event.type == "step-finish" and not self.publisher.buffered:
            # A streamed step that ran no tool: its step-finish, written now anyway, is the step's
            # first write since the model answered. The answer (the journal) and the run's
            # progress ride on it: a worker that dies before the run's end leaves the answer saved
            # and its tokens recorded (the redelivered step finishes with it), not an answer
            # asked again while the first one, billed, counts nowhere.
            super().emit(event, hold=True)
            self._flush_with_progress(False, with_events=True)
            return
        elif event.type == "steer-applied":
            # The message is in the transcript before its receipt is told: a step redelivered after
            # this worker died finds it saved and neither applies it nor announces it again (it
            # told a steer's client twice). The run's own message may still wait for the model's
            # answer: a redelivered step does not take a steer for it (`regina.step.message_saved`).
            if self.publisher.buffered:  # the receipt does not wait for the run's end either
                super().emit(event)
                self.publisher.write_pending()
                return
            self.flush(False, "")
        super().emit(event, hold)  # a terminal event's script ships the journal itself (runs/stream.py)

    def _flush_with_progress(self, before_tool: bool, with_events: bool = False) -> None:
        """Flush, recording the run's progress with it when it changed since it was last
        recorded; `with_events`: the events waiting in the publisher go out in the same script."""
        progress = self.unrecorded_progress()
        if with_events:
            self.publisher.write_pending(progress)
        else:
            self.flush(before_tool, progress)
        if progress:
            self.recorded_progress = progress

    def steering_epoch(self) -> int | None:
        """The take script checks the epoch: a stale owner takes nothing (StaleEpoch)."""
        return self.fence.epoch
