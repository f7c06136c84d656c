"""A redelivered step tells from the history whether its run's message was saved (regina/step.py)."""

from __future__ import annotations

from regina.runtime.messages import assistant, user
from regina.runtime.sink import Steer
from regina.step import message_saved


def _of(run_id: str, *msgs: dict[str, object]) -> list[dict[str, object]]:
    return [{**m, "runId": run_id} for m in msgs]


def test_steering_saved_at_the_runs_start_is_not_its_message() -> None:
    """A run saves the steering it takes at its start at once and its own message with the first
    answer: a worker killed in between left steering of the run in the history, and the step sent
    again took that for its message and never added it (the model answered only the steer)."""
    history = [user("before"), *_of("run-1", user("also this"))]
    assert not message_saved("the question", [Steer("s1", "also this")], history, "run-1")
    assert message_saved(
        "the question", [Steer("s1", "also this")], [*history, *_of("run-1", user("the question"))], "run-1"
    )


def test_an_answer_or_a_message_of_the_run_says_it_was_saved() -> None:
    assert message_saved("q", [], _of("run-1", user("q")), "run-1")
    assert message_saved("q", [], _of("run-1", assistant("a")), "run-1")
    assert not message_saved("q", [], [user("q")], "run-1")  # another run's
    # A steer with the same text as the message is counted once.
    assert not message_saved("same", [Steer("s1", "same")], _of("run-1", user("same")), "run-1")
    assert message_saved("same", [Steer("s1", "same")], _of("run-1", user("same"), user("same")), "run-1")
