"""The Celery app. Web processes use it to publish; `regina worker` runs it with gevent."""

from __future__ import annotations

from celery import Celery

app = Celery("regina")
app.config_from_object("celeryconfig")
app.conf.imports = ("workers.tasks",)

import workers.tasks  # noqa: E402,F401  (register the tasks on import)
import workers.worker_lifecycle  # noqa: E402,F401  (connect the worker signals)
