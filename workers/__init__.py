"""Celery adapter: the app, the tasks and the worker lifecycle over the core in `regina/`."""
