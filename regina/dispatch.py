"""What the core needs from the task queue, as a protocol; `workers/` implements it with Celery.

Keeping Celery behind this seam lets `regina/` stay free of framework imports (SPEC §1).
"""

from __future__ import annotations

from typing import Any, Protocol


class Dispatcher(Protocol):
    """Enqueue chat steps and member commands; repair queues after a worker died."""

    def enqueue_step(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> None:
        """Put a chat step on the instance's own queue (consumed only by its owner).

        `stream=False` lets the worker call the model without streaming (nobody watches deltas).
        """
        ...

    def step_message(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> str | None:
        """The broker message `enqueue_step` would publish, serialized, for the chat's open script
        to push itself (`RunStore.open`), with the run's id as its delivery tag (a dead owner's
        taken steps are then found through the instance's open runs); None when this broker takes
        messages only through its own client (then `enqueue_step` publishes)."""
        ...

    def send_command(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> None:
        """Put a command (attach, suspend, delete, messages) on a member's own queue."""
        ...

    def command_message(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> str | None:
        """The message `send_command` would publish, serialized, for a script that LPUSHes it onto
        `keys.member_queue(member_id)` itself (the spawn's create, a resume's claim); None when
        this broker takes messages only through its own client (then `send_command` publishes)."""
        ...

    def restore_unacked(self, instance_id: str) -> int:
        """Move a dead owner's delivered-but-unacknowledged steps back to the instance queue."""
        ...

    def purge(self, instance_id: str) -> None:
        """Drop the instance queue and its broker bookkeeping (on delete)."""
        ...
