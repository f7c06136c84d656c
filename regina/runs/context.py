"""`RunContext`: the worker-side `RunSink` of one run, backed by Redis.

It is the only door between the loop and the run's Redis state: events go through the run's
`RunPublisher`, steering is taken from `keys.steering`, the heartbeat resets the instance's idle
timer and (in the same round trip) notices a cancel a missed announcement did not deliver, and
the run's `CancelToken` is what the worker's cancel listener and budget clock trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from regina import keys
from regina.config import BudgetSettings
from regina.instances import LUA_TOUCH_EXISTING
from regina.redis_conn import script
from regina.runs.steering import decode_all
from regina.runs.store import RunStore
from regina.runs.stream import RunPublisher
from regina.runtime.events import Event, Finish, event_to_dict
from regina.runtime.sink import BUDGET, CANCELLED, Budget, CancelToken, RunProgress, Steer

# KEYS: run record, instance record. ARGV: the run's progress (`RunProgress.encode`, '' = none),
# the owner's epoch ('' = unfenced). Reset the idle timer of an existing instance (never creates
# a record), record the progress on the running run (`spent`) while the epoch is current, and
# return 1 if the run is flagged for cancel. The heartbeat follows each model call: its tokens
# are recorded here when it is the step's first write since the model answered (a sync chat's
# step without tools), not only with the run's end, which a worker that dies first never writes.
_HEARTBEAT = (
    LUA_TOUCH_EXISTING
    + """
touch_existing(KEYS[2])
if ARGV[1] ~= '' and (ARGV[2] == '' or redis.call('HGET', KEYS[2], 'epoch') == ARGV[2])
    and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'spent', ARGV[1])
end
return redis.call('HEXISTS', KEYS[1], 'cancel')
"""
)

InterrupterFactory = Callable[[], Callable[[], None] | None]


def budget_for(settings: BudgetSettings, instance_tokens: int, elapsed: float = 0.0) -> Budget:
    """A run's Budget from the agent's effective budget settings; its clock started `elapsed`
    seconds ago (a run redelivered after its worker died counts from its first start)."""
    return Budget(
        settings.max_tokens_per_run,
        settings.max_seconds_per_run,
        settings.max_tokens_per_instance,
        instance_tokens,
        time.monotonic() - max(0.0, elapsed),
    )


class RunContext:
    """One run as the loop sees it (implements `regina.runtime.sink.RunSink`)."""

    def __init__(
        self,
        client: redis.Redis,
        instance_id: str,
        run_id: str,
        publisher: RunPublisher,
        budget: Budget,
        first_steering: list[Steer],
        interrupter_factory: InterrupterFactory | None = None,
        journal_seen: int = 0,
        progress: RunProgress | None = None,
    ) -> None:
        self.r = client
        self._heartbeat = script(client, _HEARTBEAT)
        self.runs = RunStore(client, publisher.retention)
        self.instance_id = instance_id
        self.run_id: str | None = run_id
        self.publisher = publisher
        self.budget = budget
        #: What the run did so far (its crashed attempts' part included), kept by the loop.
        self.progress = progress or RunProgress()
        #: The progress last recorded on the run's record (`spent`): its earlier attempts'.
        self.recorded_progress = self.progress.encode()
        self.cancel = CancelToken()
        self._first: list[list[Steer]] = [first_steering]
        # Entries of the run's steering journal this step has had (its start's take and earlier
        # attempts' included): a take run again after a lost reply returns what it took.
        self._journal_seen = journal_seen
        self._interrupter_factory = interrupter_factory
        # The step's start read the cancel flag and the chat's open reset the idle timer just
        # before: the first heartbeat is due a second after the start.
        self._last_touch = time.monotonic()
        # When the touch is due; the host shares one per instance, so back-to-back runs of an
        # instance touch at most once a second in all (no extra round trip per chat).
        self.touch_gate: Callable[[], bool] = self._own_gate
        self._clock: threading.Timer | None = None

    def emit(self, event: Event, hold: bool = False) -> None:
        """Publish `event`; `hold`: kept for the publisher's next write also in a streamed run."""
        self.publisher.publish(event_to_dict(event), hold=hold)

    def drain_steering(self) -> list[Steer]:
        if self._first:
            return self._first.pop()
        taken = self.runs.take_steering(
            self.instance_id, cast(str, self.run_id), self._journal_seen, self.steering_epoch()
        )
        self._journal_seen += len(taken)
        return taken

    def steering_epoch(self) -> int | None:
        """The owner's epoch steering is taken and progress recorded under (None: unfenced)."""
        return None

    def finish_unless_steered(self, final: Finish) -> list[Steer]:
        self._first.clear()
        taken = self.publisher.finish_unless_steered(
            event_to_dict(final), keys.steering(self.instance_id), self._journal_seen, self.progress.encode()
        )
        self._journal_seen += len(taken)
        return decode_all(taken)

    def heartbeat(self) -> None:
        """Reset the idle timer at most once a second, and look for a cancel flag meanwhile; the
        run's progress goes in the same write when it changed (see `_HEARTBEAT`)."""
        if not self.touch_gate():
            return
        progress = self.unrecorded_progress()
        epoch = self.steering_epoch()
        run_keys = [keys.run_record(cast(str, self.run_id)), keys.instance_record(self.instance_id)]
        if self._heartbeat(keys=run_keys, args=[progress, "" if epoch is None else str(epoch)]):
            self.cancel.cancel(CANCELLED)
        if progress:
            self.recorded_progress = progress

    def unrecorded_progress(self) -> str:
        """The run's `RunProgress.encode()` when it changed since it was last recorded, else ''."""
        progress = self.progress
        if not (progress.steps or progress.usage.prompt_tokens or progress.usage.completion_tokens):
            return ""
        encoded = progress.encode()
        return "" if encoded == self.recorded_progress else encoded

    def _own_gate(self) -> bool:
        now = time.monotonic()
        if now - self._last_touch < 1.0:
            return False
        self._last_touch = now
        return True

    def interrupter(self) -> Callable[[], None] | None:
        return self._interrupter_factory() if self._interrupter_factory else None

    def start_clock(self) -> None:
        """Trip the token when `maxSecondsPerRun` has passed (the loop also checks it)."""
        seconds = self.budget.max_seconds_per_run
        if seconds is None:
            return
        left = max(0.0, seconds - (time.monotonic() - self.budget.started))
        self._clock = threading.Timer(left, self.cancel.cancel, args=(BUDGET, self.budget.clock_text()))
        self._clock.daemon = True
        self._clock.start()

    def stop_clock(self) -> None:
        """The run ended: the clock must not trip anything any more."""
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
