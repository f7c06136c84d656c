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
