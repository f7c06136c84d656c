"""The Celery app as Flower loads it (`regina flower` runs `celery -A workers.monitor flower`).

Flower picks its Broker tab's client from the broker URL's scheme, which kombu builds from the
transport's name: our publishing transport (workers/transport.py, selected by a dotted path or,
over a Unix socket, as `regina+socket://`) yields no scheme Flower knows. Flower only reads
queue lengths and events, so it uses kombu's stock Redis transport on the same Redis (over a
socket: `redis+socket://`, which Flower reads too); web and worker processes keep ours.
"""

from __future__ import annotations

from workers.broker_url import stock_broker_url
from workers.celery_app import app

app.conf.broker_transport = None
app.conf.broker_url = stock_broker_url(str(app.conf.broker_url))  # type: ignore[misc]

__all__ = ["app"]
