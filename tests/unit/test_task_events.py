"""Task events for Flower are buffered, and a step's settlement is retried (workers/step_strategy.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gevent
from celery import Celery
from celery.exceptions import Reject

from workers.step_strategy import EVENT_BATCH_LIMIT, TaskEvents, step_strategy


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


def test_a_hand_back_the_broker_refuses_is_tried_again() -> None:
    """A step handed back (its task raised Reject: the instance is not this member's any more)
    whose reject meets a Redis hiccup is tried again, not left unacknowledged under its live
    owner for good."""
    rejects: list[bool] = []

    def reject(requeue: bool = False) -> None:
        rejects.append(requeue)
        if len(rejects) < 3:
            raise ConnectionError("broker gone for a moment")

    def run(*_args: Any) -> None:
        raise Reject("not here", requeue=True)

    class _Pool:
        def apply_async(self, fn: Any, args: Any, callback: Any = None) -> None:
            fn(*args)

    app = Celery(broker="memory://")
    app.conf.worker_send_task_events = False
    handle = step_strategy(SimpleNamespace(run=run, name="regina.chat"), app, SimpleNamespace(pool=_Pool()))
    message = SimpleNamespace(
        headers={"id": "task-1"}, delivery_info={"routing_key": "regina.i.x"}, channel=None, reject=reject
    )
    handle(message, (["x", "run-1", "hi", False], {}, {}), None, None, None)

    assert rejects == [True, True, True]
