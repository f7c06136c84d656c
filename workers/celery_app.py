"""The Celery app. Web processes use it to publish; `regina worker` runs it with gevent.

`create_app` names the worker-only modules with `include=`: Celery imports them when a worker
starts, so a process that only publishes (the web, `workers.local`) never imports the tasks, the
worker's signal handlers or the runtime they pull in (`regina.host`, the agent loop, LiteLLM).
Chat steps and commands are published by task name (`workers.dispatcher`).
"""

from __future__ import annotations

from celery import Celery

__all__ = ["WORKER_MODULES", "app", "create_app"]

WORKER_MODULES = ("workers.tasks", "workers.signals")
"""Imported by a starting worker only: the tasks and the worker's signal handlers."""


def create_app() -> Celery:
    """A Regina Celery app configured from `celeryconfig`, its worker modules included."""
    # No fixups: Regina is no Django project, and the Django fixup imports `celery.worker`.
    celery_app = Celery("regina", include=list(WORKER_MODULES), fixups=[])
    celery_app.config_from_object("celeryconfig")
    return celery_app


app = create_app()
"""The process's app: `celery -A workers.celery_app` runs it; tasks register on it."""
