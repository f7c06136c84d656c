"""A run's progress across deliveries: what a crashed attempt recorded, read back by the next one."""

from __future__ import annotations

from regina.config import BudgetSettings
from regina.runs.context import budget_for
from regina.runs.steering import encode
from regina.runs.store import parse_begun
from regina.runtime.events import Usage
from regina.runtime.sink import Budget, RunProgress, Steer
from regina.step import abandoned_text


def test_progress_round_trips_through_the_run_records_field() -> None:
    p = RunProgress(3, Usage(prompt_tokens=120, completion_tokens=7))
    assert p.encode() == "3 120 7"
    assert RunProgress.decode(p.encode()) == p
    assert RunProgress.decode("") == RunProgress()  # nothing recorded: a fresh run


def test_a_redelivered_begin_reply_carries_the_crashed_attempts_progress() -> None:
    earlier, taken = Steer("s1", "first"), Steer("s2", "second")
    flat = ["run", "9", "running", "", "40", "10", "2 30 4", "12.500", "2", "1", encode(earlier), encode(taken)]
    begun = parse_begun(flat)
    assert begun.kind == "run" and begun.seq == 9 and begun.previous_status == "running"
    assert begun.instance_tokens == 50
    assert begun.spent == RunProgress(2, Usage(prompt_tokens=30, completion_tokens=4))
    assert begun.elapsed == 12.5 and begun.attempts == 2
    assert begun.earlier == [earlier] and begun.steered == [taken]


def test_a_first_begin_reply_starts_from_nothing() -> None:
    begun = parse_begun(["run", "0", "queued", "", "0", "0", "", "0", "1", "0"])
    assert begun.spent == RunProgress() and begun.elapsed == 0.0 and begun.attempts == 1
    assert begun.earlier == [] and begun.steered == []


def test_the_seconds_budget_counts_from_the_runs_first_start() -> None:
    settings = BudgetSettings(max_seconds_per_run=5)
    assert budget_for(settings, 0, elapsed=0.0).exceeded(0) is None
    assert "maxSecondsPerRun" in (budget_for(settings, 0, elapsed=5.5).exceeded(0) or "")
    assert budget_for(settings, 0, elapsed=-3.0).exceeded(0) is None  # a clock behind: never ahead of time


def test_the_abandoned_runs_error_names_the_limit() -> None:
    assert abandoned_text(1, 1) == (
        "run abandoned: the worker running it stopped once (limits.maxRunDeliveries is 1); it is not run again"
    )
    assert "stopped 3 times" in abandoned_text(3, 3)


def test_the_tightest_token_budget_sizes_the_next_call_and_names_the_stop() -> None:
    budget = Budget(max_tokens_per_run=100, max_tokens_per_instance=500, instance_tokens_before=450)
    assert budget.tokens_left(20) == 30  # the instance's 500 leaves less than the run's 100
    assert Budget().tokens_left(10**6) is None and Budget(max_seconds_per_run=5).tokens_left(0) is None
    assert budget.exceeded(20) is None
    stop = budget.exceeded(20, next_prompt=30) or ""
    assert stop.startswith("budget maxTokensPerInstance reached: the instance used 470 of 500") and "about 30" in stop
    # A step that used the budget up exactly has not passed it; one more token has
    assert budget.passed(50) is None
    assert budget.passed(51) == "budget maxTokensPerInstance reached: the instance used 501 of 500 tokens"
    assert "cut at 30 tokens" in budget.answer_cut(50, 30)
