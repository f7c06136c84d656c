"""A run record's public JSON (SPEC §12)."""

from __future__ import annotations

from regina.runs.record import public


def test_times_are_shown_in_their_order_across_processes_clocks() -> None:
    """createdAt is the web's reading of Redis's clock, startedAt and finishedAt the worker's
    (regina/clock.py): a millisecond apart, a run could show it started before it was created."""
    shown = public("run-1", {"createdAt": "100.005", "startedAt": "100.004", "finishedAt": "100.010"})
    assert shown["createdAt"] == shown["startedAt"] == "1970-01-01T00:01:40.005Z"
    assert shown["finishedAt"] == "1970-01-01T00:01:40.010Z"
    queued = public("run-2", {"createdAt": "100.005", "status": "queued"})
    assert (queued["startedAt"], queued["finishedAt"], queued["status"]) == (None, None, "queued")


def test_a_running_runs_usage_is_what_its_record_says_it_spent_so_far() -> None:
    """Regression: a running run showed usage 0 although its record had its progress (`spent`)."""
    running = public("run-3", {"status": "running", "spent": "2 40 10"})
    assert running["usage"] == {"promptTokens": 40, "completionTokens": 10}
    assert public("run-4", {"status": "running"})["usage"] == {"promptTokens": 0, "completionTokens": 0}
    # An ended run shows its final usage, which includes what it had recorded
    ended = {"status": "finished", "spent": "2 40 10", "promptTokens": "45", "completionTokens": "11"}
    assert public("run-5", ended)["usage"] == {"promptTokens": 45, "completionTokens": 11}
