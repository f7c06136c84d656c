"""Task events for Flower are buffered (workers/step_strategy.py `TaskEvents`)."""

from __future__ import annotations

from typing import Any

import gevent
from celery import Celery

from workers.step_strategy import EVENT_BATCH_LIMIT, TaskEvents


class _Recorder:
    """Stands in for Celery's event dispatcher: which greenlet published what."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, type_: str, **fields: Any) -> None:
        self.sent.append((type_, gevent.getcurrent()))

    def flush(self) -> None:
        gevent.sleep(0)  # a publish waits on the broker: other greenlets run meanwhile


def test_a_full_batch_is_published_off_the_senders_greenlet() -> None:
    """A step sends `task-started` before it takes its turn on its instance: if that send
    published (and so waited on Redis), the instance's next step could take the turn first."""
    events = TaskEvents(Celery(broker="memory://"), "test@host")
    recorder = events.dispatcher = _Recorder()  # type: ignore[assignment]

    def step() -> None:
        for n in range(EVENT_BATCH_LIMIT + 5):
            events.send("task-started", uuid=str(n))

    other_ran: list[bool] = []
    sender = gevent.spawn(step)
    gevent.spawn(lambda: other_ran.append(not sender.dead))  # would run inside a yielding send
    sender.join()
    gevent.sleep(0.01)

    assert other_ran == [False]  # the sender never yielded while sending
    assert len(recorder.sent) >= EVENT_BATCH_LIMIT
    assert all(greenlet is not sender for _type, greenlet in recorder.sent)
    events._flusher.kill()
