"""What a run did, seen from its events: one log line per run and the run metrics.

`WatchedRun` (the worker's RunContext) shows every event of a run to its `RunWatch` before
publishing it (a type check and, at most, a clock read); `done()` writes one INFO line
(instance, run, outcome, steps, tokens, duration), a WARNING naming the provider and model when
the model failed, and the counters and histograms of regina/metrics.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from regina.metrics import (
    FIRST_TOKEN_SECONDS,
    MODEL_ERRORS,
    MODEL_SECONDS,
    RUN_SECONDS,
    RUN_STEPS,
    RUNS,
    TOKENS,
    TOOL_CALLS,
)
from regina.runs.context import RunContext
from regina.runtime.events import Event, StepFinish, TextDelta, ToolCallEvent, ToolResultEvent
from regina.runtime.loop import TurnResult

log = logging.getLogger("regina.run")

#: Labelled children by (metric, label values): prometheus_client's `labels` validates and locks
#: on every call, ≈ 6 µs each, four per chat; the label values are few (modes, outcomes, models).
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    child = _children.get((metric, values))
    if child is None:
        child = _children[metric, values] = metric.labels(*values)
    return child


class RunWatch:
    """Follows one run's events (see the module docstring)."""

    def __init__(
        self, instance_id: str, run_id: str, provider: str, model: str, stream: bool, offered: Callable[[str], bool]
    ) -> None:
        self.instance_id = instance_id
        self.offered = offered
        """Whether the instance offers a tool of this name (a call's label is its name only then)."""
        self.run_id = run_id
        self.provider = provider
        self.model = model
        self.mode = "stream" if stream else "sync"
        self.started = self.step_started = time.monotonic()
        self.model_done = False
        self.first_token: float | None = None
        self.result: TurnResult | None = None
        """What the run returned; left None when it raised."""

    def _model_call_ended(self) -> None:
        if not self.model_done:
            self.model_done = True
            _child(MODEL_SECONDS, self.provider, self.model).observe(time.monotonic() - self.step_started)

    def see(self, event: Event) -> None:
        """Account for one event of the run."""
        if isinstance(event, TextDelta):
            if self.first_token is None:
                self.first_token = time.monotonic() - self.started
        elif isinstance(event, ToolCallEvent):
            self._model_call_ended()
        elif isinstance(event, ToolResultEvent):
            failed = isinstance(event.result, dict) and "error" in event.result
            # A name the model made up is not a label of its own (each would be a series for good),
            # whatever its result says (a call skipped by a cancel never reached the tool lookup).
            tool = event.tool_name if self.offered(event.tool_name) else "unknown"
            _child(TOOL_CALLS, tool, "error" if failed else "ok").inc()
        elif isinstance(event, StepFinish):
            self._model_call_ended()
            self.step_started, self.model_done = time.monotonic(), False

    def done(self) -> None:
        """Log the run's line and record its metrics (once, when the run returned or raised)."""
        result = self.result
        seconds = time.monotonic() - self.started
        outcome = result.finish_reason if result is not None else "crashed"
        steps = result.steps if result is not None else 0
        prompt = result.usage.prompt_tokens if result is not None else 0
        completion = result.usage.completion_tokens if result is not None else 0
        _child(RUNS, self.mode, outcome).inc()
        RUN_SECONDS.observe(seconds)
        RUN_STEPS.observe(steps)
        if self.first_token is not None:
            FIRST_TOKEN_SECONDS.observe(self.first_token)
        if prompt:
            _child(TOKENS, "prompt", self.provider, self.model).inc(prompt)
        if completion:
            _child(TOKENS, "completion", self.provider, self.model).inc(completion)
        if result is not None and result.error:
            _child(MODEL_ERRORS, self.provider, self.model).inc()
            log.warning(
                "run %s model error (provider %s, model %s): %s", self.run_id, self.provider, self.model, result.error
            )
        log.info(
            "run %s instance %s %s: %d step(s), %d+%d tokens, %.2fs",
            self.run_id,
            self.instance_id,
            outcome,
            steps,
            prompt,
            completion,
            seconds,
        )


class WatchedRun(RunContext):
    """A RunContext whose events its RunWatch sees before they are published."""

    watch: RunWatch | None = None

    def emit(self, event: Event, hold: bool = False) -> None:
        if self.watch is not None:
            self.watch.see(event)
        super().emit(event, hold)
