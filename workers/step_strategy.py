"""Chat steps taken straight from the consumer loop onto the worker's gevent pool.

Celery's default path for a task message builds a `Request`, traces it (signals, state,
result handling, one task event per transition published on its own) and acknowledges it
through the consumer loop: about 3 ms of a chat's latency and as much worker CPU per step,
measured in docs/benchmarks.md. A chat step needs none of that: its result travels as run
events. This Strategy decodes the message, runs the step on the same pool (so the pool's size,
warm shutdown and back-pressure still apply) and acknowledges it when the step ends
(`acks_late`). The task events Flower shows (received, started, succeeded or failed, with the
task's name and arguments) are still sent, buffered and published in batches off the step's
path (`task.multi` messages, which Celery's event receivers and Flower read).

Like workers/command_strategy.py this relies on Celery's Strategy interface (`Task.Strategy`, the handler
signature), hence the pinned Celery minor version and the integration tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from celery.exceptions import Reject

from regina.runs.ack import CURRENT_DELIVERY
from workers.tasks import publish_step_error
from workers.transport import forget_settled, step_delivery

log = logging.getLogger("regina.worker")

#: How often buffered task events are published (seconds); a batch is also sent when it is full.
EVENT_FLUSH_INTERVAL = 0.2
EVENT_BATCH_LIMIT = 100


class TaskEvents:
    """Buffered task events for Flower, published in batches by one background greenlet.

    `send` only notes the event and its time: Celery's dispatcher builds the event (its clock,
    host, pid, UTC offset) at the flush, off the step's path (the received and started events
    come before the model call)."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.dispatcher = app.events.Dispatcher(
            app.connection_for_write(),
            hostname=hostname,
            groups=["task"],
            buffer_group=["task"],
            buffer_limit=EVENT_BATCH_LIMIT,
        )
        self._noted: list[tuple[str, float, dict[str, Any]]] = []
        self._flusher = gevent.spawn(self._flush_loop)
        self._full: gevent.Greenlet | None = None

    def send(self, type_: str, **fields: Any) -> None:
        """Note one event (timestamped now); the flush loop publishes it, or a greenlet of its own
        when the batch is full. Never this call: a step's greenlet sends `task-started` before
        it takes its turn on its instance, and a publish there would let the instance's next
        step take the turn first."""
        self._noted.append((type_, time.time(), fields))
        if len(self._noted) >= EVENT_BATCH_LIMIT and self._full is None:
            self._full = gevent.spawn(self._flush_full)

    def _flush_full(self) -> None:
        try:
            self.flush()
        finally:
            self._full = None

    def flush(self) -> None:
        """Publish what is noted now (the flush loop does this every EVENT_FLUSH_INTERVAL)."""
        noted, self._noted = self._noted, []
        try:
            for type_, at, fields in noted:
                self.dispatcher.send(type_, timestamp=at, **fields)
            self.dispatcher.flush()
        except Exception:  # a broker hiccup must not end the loop; events are best effort
            log.warning("could not publish task events", exc_info=True)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(EVENT_FLUSH_INTERVAL)
            self.flush()


_events: TaskEvents | None = None


def task_events(app: Any, hostname: str) -> TaskEvents:
    """The process's one TaskEvents (Celery rebuilds task strategies on every broker reconnect)."""
    global _events
    if _events is None:
        _events = TaskEvents(app, hostname)
    return _events


def flush_task_events() -> None:
    """Publish every buffered task event (at worker shutdown, so Flower sees the last steps)."""
    if _events is not None:
        _events.flush()


#: How long a step's greenlet keeps retrying an acknowledgement that failed (seconds).
ACK_RETRY_FOR = 30.0


def acknowledge(
    ack: Callable[[], Any], task_id: str, retry_for: float = ACK_RETRY_FOR, what: str = "acknowledgement"
) -> bool:
    """Acknowledge a finished step (or hand one back: `what`), retrying with backoff while the
    broker refuses.

    An ack that never lands leaves the step in kombu's unacked index; if a restore moves it back
    to the queue later, the worker drops it (its run is already finished, see `InstanceHost`).
    A hand-back that never lands leaves it there under a live owner until that owner exits.
    """
    deadline = time.monotonic() + retry_for
    pause = 0.05
    while True:
        try:
            ack()
            return True
        except Exception:
            if time.monotonic() > deadline:
                log.exception("step %s: %s failed for %gs; giving up", task_id, what, retry_for)
                return False
            log.warning("step %s: %s failed; retrying", task_id, what, exc_info=True)
            gevent.sleep(pause)
            pause = min(pause * 2, 2.0)


#: Runs whose steps this worker holds (from their handling to their end: waiting for the pool or
#: for their instance's turn, or running), by run id, with how many of its steps (a step given
#: back and taken again can overlap its first copy's end). Each heartbeat writes their ids
#: (`keys.member_runs`): the lost-run sweep ends no run a live member holds (regina/runs/lost.py).
_held: dict[str, int] = {}


def held_runs() -> list[str]:
    """Ids of the runs whose steps this worker holds now."""
    return list(_held)


def _hold(run_id: str) -> None:
    _held[run_id] = _held.get(run_id, 0) + 1


def _let_go(run_id: str) -> None:
    left = _held.get(run_id, 0) - 1
    if left > 0:
        _held[run_id] = left
    else:
        _held.pop(run_id, None)


def _apply_held(pool: Any, run_id: str, execute: Callable[..., None], *args: Any) -> None:
    """`execute(*args)` on the pool, the run held from now (the pool may make it wait for a free
    greenlet) to the end of `execute`."""
    _hold(run_id)
    try:
        pool.apply_async(_holding, (run_id, execute, *args), callback=_ignore)
    except BaseException:
        _let_go(run_id)
        raise


def _holding(run_id: str, execute: Callable[..., None], *args: Any) -> None:
    try:
        execute(*args)
    finally:
        _let_go(run_id)


def _ignore(_result: Any) -> None:
    """The pool's result callback: a step's outcome travels as run events, not as a result."""


def _report(args: list[Any], exc: BaseException) -> None:
    """A step that failed outside the task still ends its run with an error event."""
    try:
        publish_step_error(str(args[0]), str(args[1]), exc)
    except Exception:
        log.exception("could not report the failure of a step to its run")


def step_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., None]:
    """Build the handler Celery calls for every `regina.chat` message this worker receives."""
    pool = consumer.pool
    events = task_events(app, consumer.hostname) if app.conf.worker_send_task_events else None
    run = task.run

    def execute(task_id: str, args: list[Any], kwargs_: dict[str, Any], message: Any) -> None:
        if events is not None:
            events.send("task-started", uuid=task_id)
        started = time.monotonic()
        reject = message.reject
        # The run's finish script acknowledges the step when it ends the run (regina/runs/ack.py).
        delivery = step_delivery(message, str(args[1]))
        CURRENT_DELIVERY.set(delivery)  # this greenlet's own context: it ends with the step

        def ack() -> None:
            if delivery is not None and delivery.settled:
                forget_settled(message)
            else:
                message.ack()

        try:
            run(*args, **kwargs_)
        except Reject as exc:
            requeue = bool(getattr(exc, "requeue", False))
            acknowledge(lambda: reject(requeue=requeue), task_id, what="hand-back")
            if events is not None:
                events.send("task-rejected", uuid=task_id, requeue=requeue)
            return
        except Exception as exc:
            # The task publishes its own error event; what reaches here is a bug: do not redeliver.
            acknowledge(ack, task_id)
            if events is not None:
                events.send("task-failed", uuid=task_id, exception=repr(exc), traceback="")
            log.exception("step %s failed outside the task", task_id)
            _report(args, exc)
            return
        # A greenlet killed at shutdown (GreenletExit) leaves its step unacknowledged on purpose:
        # the step is restored and runs again on the instance's next owner.
        acknowledge(ack, task_id)
        if events is not None:
            events.send("task-succeeded", uuid=task_id, result="None", runtime=time.monotonic() - started)

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
        args, kwargs_, _embed = body if body is not None else message.decode()
        headers = message.headers
        task_id = headers["id"]
        if events is not None:
            events.send(
                "task-received",
                uuid=task_id,
                name=task.name,
                args=headers.get("argsrepr") or repr(args),
                kwargs=headers.get("kwargsrepr") or repr(kwargs_),
                root_id=headers.get("root_id"),
                parent_id=headers.get("parent_id"),
                retries=headers.get("retries", 0),
                eta=None,
                expires=None,
                exchange="",
                routing_key=message.delivery_info.get("routing_key"),  # Flower's "queue" of the task
            )
        # Acknowledge from the step's greenlet as soon as it ends (not at the consumer loop's next
        # turn): a finished step should leave the unacked set before anything can redeliver it.
        _apply_held(pool, str(args[1]), execute, task_id, args, kwargs_, message)
        # Let the step run up to its first Redis wait before the consumer re-sends its BRPOP
        # over every attached queue (≈ 0.4 ms sooner on the step's path).
        gevent.sleep(0)

    return handle
