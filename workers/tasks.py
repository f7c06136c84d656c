"""Celery tasks: thin wrappers that decode a message and call the core."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import Reject

from regina import keys
from regina.errors import StaleEpoch
from regina.host import NotHere, step_error
from regina.runs.store import ENDED
from workers.celery_app import app
from workers.context import context
from workers.dispatcher import CHAT_TASK, COMMAND_TASK

log = logging.getLogger("regina.worker")


class ChatTask(Task):  # type: ignore[type-arg]
    """Chat steps skip Celery's Request/trace path (see workers/step_strategy.py)."""

    Strategy = "workers.step_strategy:step_strategy"


@app.task(name=CHAT_TASK, base=ChatTask, acks_late=True, ignore_result=True)
def chat(instance_id: str, run_id: str, message: str | None, stream: bool = True) -> None:
    """Run one chat step of an instance (its steps arrive in order on its own queue)."""
    ctx = context()
    try:
        ctx.host.run_step(instance_id, run_id, message, stream)
    except (NotHere, StaleEpoch) as exc:
        _hand_back(instance_id, run_id, exc)
    except Exception as exc:
        log.exception("step %s for %s failed", run_id, instance_id)
        try:
            publish_step_error(instance_id, run_id, exc)
        except (NotHere, StaleEpoch) as moved:  # failed on an owner that is no longer one
            _hand_back(instance_id, run_id, moved)


def _hand_back(instance_id: str, run_id: str, exc: Exception) -> None:
    """This member no longer holds the instance: give the step back for its real owner and stop
    consuming the instance's queue (the consumer loop does that, see workers/command_strategy.py).
    A step whose run has ended (its instance was deleted: the delete ends its runs first) is
    acknowledged instead: requeued after the delete's purge, it would be a queue nobody reads."""
    ctx = context()
    ctx.dispatcher.send_command(ctx.member_id, "release", {"instanceId": instance_id}, None)
    if ctx.client.hget(keys.run_record(run_id), "status") in ENDED:
        log.info("step %s for %s dropped: its run has ended (%s)", run_id, instance_id, exc)
        return
    log.warning("step %s for %s handed back: %s", run_id, instance_id, exc)
    raise Reject(str(exc), requeue=True) from exc


def publish_step_error(instance_id: str, run_id: str, exc: BaseException) -> None:
    """End the run with an error event (fenced: `InstanceHost.end_failed`) when its step failed
    where the host could not end it itself (before the step ran, or ending it failed)."""
    context().host.end_failed(instance_id, run_id, step_error(exc))


class CommandTask(Task):  # type: ignore[type-arg]
    """Member commands run inline in the consumer loop (see workers/command_strategy.py)."""

    Strategy = "workers.command_strategy:command_strategy"


@app.task(name=COMMAND_TASK, base=CommandTask, ignore_result=True)
def command(name: str, payload: dict[str, object], token: str | None) -> None:
    """Never executed through the pool: the custom Strategy handles the message."""
    raise RuntimeError("regina.command is handled by its Strategy, not executed")
