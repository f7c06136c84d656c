"""The Celery app as Flower loads it (`regina flower` runs `celery -A workers.monitor flower`).

Flower picks its Broker tab's client from the broker URL's scheme, which kombu builds from the
transport's name: our publishing transport (workers/transport.py, selected by a dotted path)
yields no scheme Flower knows. Flower only reads queue lengths and events, so it uses kombu's
stock Redis transport on the same URL; web and worker processes keep ours.
"""

from __future__ import annotations

from workers.celery_app import app

app.conf.broker_transport = None

__all__ = ["app"]
