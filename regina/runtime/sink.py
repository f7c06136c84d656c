"""The loop's one door to the run it serves (`RunSink`), and the signals that cross it.

`run_turn` needs to publish events, take steering messages, say it is alive, stop when told and
know its budget; `RunSink` is that, as one object. The worker's implementation
(`regina.runs.context.RunContext`) backs it with Redis; `LocalSink` keeps everything in memory
(unit tests, benchmarks, embedding the loop).

Stopping a run from outside its loop (a cancel, SPEC §12, or a budget on the clock) goes through
the sink's `CancelToken`: whoever stops the run calls `cancel(reason)`; the loop checks the token
before each model call and each tool, and whatever blocks the run at that moment is interrupted
through the *interrupters* registered for that stretch: the worker's host registers one that
raises `RunCancelled` inside the waiting greenlet (which closes the provider's HTTP stream); a
tool executor running elsewhere (a thread, a process) registers its own, e.g. one that kills the
child. An interrupter is called at most once, from the canceller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from regina.errors import ReginaError
from regina.runtime.events import Event, Finish, Usage

log = logging.getLogger("regina.runtime")


@dataclass(frozen=True)
class Steer:
    """One steering message and its receipt id (SPEC §12 `steerId`; "" for none)."""

    steer_id: str
    message: str


@dataclass(frozen=True)
class Budget:
    """Limits a run stops at with finishReason "budget" (None = no limit).

    Token budgets are kept three ways: no model call when what the run spent, plus the next
    call's prompt by estimate, leaves nothing (`exceeded`); the next call's answer is capped to
    what is left (`tokens_left`, sent as the provider's max_tokens); and a step whose usage went
    past a budget, or whose answer that cap cut, ends the run (`passed`, `answer_cut`)."""

    max_tokens_per_run: int | None = None
    max_seconds_per_run: float | None = None
    max_tokens_per_instance: int | None = None
    instance_tokens_before: int = 0
    """Tokens the instance had spent before this run (for `max_tokens_per_instance`)."""
    started: float = field(default_factory=time.monotonic)

    def _tightest(self, run_tokens: int) -> tuple[int, str] | None:
        """(tokens left, the text naming that budget and what was used of it) of the token
        budget with the fewest tokens left; None when no token budget applies."""
        options: list[tuple[int, str]] = []
        if self.max_tokens_per_run is not None:
            limit = self.max_tokens_per_run
            text = f"budget maxTokensPerRun reached: this run used {run_tokens} of {limit} tokens"
            options.append((limit - run_tokens, text))
        if self.max_tokens_per_instance is not None:
            limit, spent = self.max_tokens_per_instance, self.instance_tokens_before + run_tokens
            text = f"budget maxTokensPerInstance reached: the instance used {spent} of {limit} tokens"
            options.append((limit - spent, text))
        return min(options, key=lambda o: o[0]) if options else None

    def tokens_left(self, run_tokens: int) -> int | None:
        """Tokens the run may still spend under its tightest token budget (None: no limit)."""
        tightest = self._tightest(run_tokens)
        return None if tightest is None else tightest[0]

    def exceeded(self, run_tokens: int, next_prompt: int = 0) -> str | None:
        """The text naming the budget this run reached, or None while within every limit.

        `next_prompt`: the estimated tokens of the prompt the next model call would send; a
        budget they would use up is reached already (the call could not answer anything)."""
        tightest = self._tightest(run_tokens)
        if tightest is not None and tightest[0] - next_prompt <= 0:
            left, text = tightest
            return text if left <= 0 else f"{text}, and the next model call's prompt is about {next_prompt} more"
        elapsed = time.monotonic() - self.started
        if self.max_seconds_per_run is not None and elapsed >= self.max_seconds_per_run:
            return self.clock_text()
        return None

    def passed(self, run_tokens: int) -> str | None:
        """The text naming a token budget the run went past (a step ended over it), or None.
        Using a budget up exactly is not passing it: the step's answer is whole."""
        tightest = self._tightest(run_tokens)
        return tightest[1] if tightest is not None and tightest[0] < 0 else None

    def answer_cut(self, run_tokens: int, cap: int) -> str:
        """The text of a run whose last answer the token budget cut at `cap` tokens."""
        tightest = self._tightest(run_tokens)
        named = tightest[1] if tightest is not None else "budget reached"
        return f"{named}; the model's answer was cut at {cap} tokens, what the budget left for it"

    def clock_text(self) -> str:
        """The text of a run stopped by `maxSecondsPerRun`."""
        return f"budget maxSecondsPerRun reached: the run may take {self.max_seconds_per_run:g} seconds"


@dataclass
class RunProgress:
    """How far a run got: the model calls it completed (steps) and the tokens they and its
    compaction summaries spent. The loop starts from it (a run redelivered after its worker died
    continues from what the crashed attempt recorded) and updates it after every model call; the
    worker records it in Redis with the step's own writes (regina/step.py)."""

    steps: int = 0
    usage: Usage = field(default_factory=Usage)

    def encode(self) -> str:
        """The run record's `spent` field: "<steps> <promptTokens> <completionTokens>"."""
        return f"{self.steps} {self.usage.prompt_tokens} {self.usage.completion_tokens}"

    @classmethod
    def decode(cls, text: str) -> RunProgress:
        """The inverse of `encode`; "" (nothing recorded) is no progress."""
        if not text:
            return cls()
        steps, prompt, completion = (int(x) for x in text.split())
        return cls(steps, Usage(prompt_tokens=prompt, completion_tokens=completion))


CANCELLED = "cancelled"
BUDGET = "budget"


class RunCancelled(ReginaError):
    """Raised inside a run's loop when its token is cancelled; `reason` is the finishReason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CancelToken:
    """The stop signal of one run; safe to call from another greenlet or thread."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.message = ""
        self._lock = threading.Lock()
        self._interrupters: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        """True once `cancel` was called."""
        return self.reason is not None

    def cancel(self, reason: str = CANCELLED, message: str = "the run was cancelled") -> None:
        """Stop the run: the first reason wins; whatever blocks the run now is interrupted."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self.message = reason, message
            interrupters, self._interrupters = self._interrupters, []
        for interrupt in interrupters:
            try:
                interrupt()
            except Exception:  # one executor failing to stop must not keep the others running
                log.warning("interrupting a cancelled run failed", exc_info=True)

    def check(self) -> None:
        """Raise `RunCancelled` if the run was cancelled."""
        if self.reason is not None:
            raise RunCancelled(self.reason, self.message)

    def add_interrupter(self, interrupt: Callable[[], None]) -> Callable[[], None]:
        """Call `interrupt()` on cancel (at once if already cancelled); returns the remover.

        For tool executors that run work elsewhere (a thread, a child process): register a
        callable that stops that work, and remove it when the work ends.
        """
        with self._lock:
            if self.reason is None:
                self._interrupters.append(interrupt)
                return lambda: self._remove(interrupt)
        interrupt()
        return lambda: None

    def _remove(self, interrupt: Callable[[], None]) -> None:
        with self._lock:
            if interrupt in self._interrupters:
                self._interrupters.remove(interrupt)

    @contextmanager
    def interruptible(self, interrupt: Callable[[], None] | None) -> Iterator[None]:
        """A stretch (a model call, a tool) that `interrupt()` can cut short on cancel.

        On leaving, `interrupt.close()` is called when it has one, so an interruption scheduled
        too late does not land outside the stretch.
        """
        self.check()
        if interrupt is None:
            yield
            return
        remove = self.add_interrupter(interrupt)
        try:
            yield
        finally:
            remove()
            close = getattr(interrupt, "close", None)
            if close is not None:
                close()


class RunSink(Protocol):
    """What a running turn needs from the run it serves."""

    run_id: str | None
    cancel: CancelToken
    budget: Budget
    progress: RunProgress
    """Where the run starts from (earlier attempts), kept up to date by the loop."""

    def emit(self, event: Event) -> None:
        """Publish one event of the run."""

    def drain_steering(self) -> list[Steer]:
        """Take every steering message waiting for this run, oldest first."""

    def finish_unless_steered(self, final: Finish) -> list[Steer]:
        """Publish `final` unless steering messages wait; then return them instead."""

    def heartbeat(self) -> None:
        """The run is alive (resets the instance's idle timer; may notice a cancel)."""

    def interrupter(self) -> Callable[[], None] | None:
        """A callable that cuts short whatever the calling code blocks on now (None: none)."""


class LocalSink:
    """An in-memory RunSink: events to a callback, steering from a list of batches."""

    def __init__(
        self,
        emit: Callable[[Event], None],
        steering: list[list[Steer]] | None = None,
        run_id: str | None = None,
        budget: Budget | None = None,
        heartbeat: Callable[[], None] = lambda: None,
        progress: RunProgress | None = None,
    ) -> None:
        self._emit = emit
        self.progress = progress or RunProgress()
        self.steering = steering if steering is not None else []
        self.run_id = run_id
        self.budget = budget or Budget()
        self.cancel = CancelToken()
        self._heartbeat = heartbeat

    def emit(self, event: Event) -> None:
        self._emit(event)

    def drain_steering(self) -> list[Steer]:
        return self.steering.pop(0) if self.steering else []

    def finish_unless_steered(self, final: Finish) -> list[Steer]:
        steered = self.drain_steering()
        if not steered:
            self.emit(final)
        return steered

    def heartbeat(self) -> None:
        self._heartbeat()

    def interrupter(self) -> Callable[[], None] | None:
        return None
