"""Celery adapter over the core in `regina/`.

- `celery_app`        the Celery app factory (publishers import only this and `dispatcher`);
- `dispatcher`        the core's Dispatcher: publish steps and commands to their queues;
- `transport`         kombu's Redis transport with one publishing client per channel;
- `local`             a Coordinator for Python code beside the workers (no HTTP);
- worker only (imported when a worker starts, `celery_app.WORKER_MODULES`):
  `tasks` (the Celery tasks), `signals` (join, heartbeat, idle and orphan sweeps, leave),
  `context` (the worker process's shared objects), `step_strategy` (chat steps straight onto
  the pool, with batched task events), `command_strategy` (member commands in the consumer loop).
"""
