"""Drive instances from Python beside the workers: straight to Celery and Redis, no HTTP.

from workers.local import local_coordinator

regina = local_coordinator()  # settings from REGINA_CONFIG / REGINA_* / REDIS_URL (or `regina up`'s Redis)
iid = regina.spawn("demo").instance_id
print(regina.chat(iid, "hello")["text"])
for event in regina.follow_run(regina.start_run(iid, "stream this")):
    print(event["type"])
"""

from __future__ import annotations

from typing import Any

from regina.config import Settings, process_settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect, embedded_redis_url
from regina.registry import AgentRegistry
from storage import make_storage
from workers.amqp import make_dispatcher
from workers.broker_url import kombu_broker_url
from workers.celery_app import app


def local_coordinator(settings: Settings | None = None) -> Coordinator:
    """The same Coordinator a web process uses, publishing tasks to Celery directly."""
    settings = settings or process_settings()
    settings = settings.model_copy(update={"redis": embedded_redis_url(settings)})
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    use_broker(kombu_broker_url(settings.broker_url))
    storage = make_storage(settings.storage, settings.redis)
    return Coordinator(settings, registry, client, make_dispatcher(app, client), storage)


def use_broker(url: str) -> None:
    """Point the process's Celery app at `url`. Celery makes its connection and producer pools at
    their first use, for the URL of that moment: a second coordinator for another broker in the
    same process published its commands to the first one's, where no worker answered them."""
    if app.conf.broker_url == url:
        return
    app.conf.broker_url = url  # type: ignore[misc]
    # What Celery itself drops after a fork (`Celery._after_fork`); the pools stay in kombu's
    # registry, keyed by URL, for whoever uses that broker again (closing them broke that).
    celery: Any = app  # the two pools are Celery's private attributes (untyped)
    celery._pool = None
    celery.amqp._producer_pool = None
