"""Drive instances from Python beside the workers: straight to Celery and Redis, no HTTP.

from workers.local import local_coordinator

regina = local_coordinator()  # settings from REGINA_CONFIG / REGINA_* / REDIS_URL (or `regina up`'s Redis)
iid = regina.spawn("demo").instance_id
print(regina.chat(iid, "hello")["text"])
for event in regina.follow_run(regina.start_run(iid, "stream this")):
    print(event["type"])
"""

from __future__ import annotations

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
    app.conf.broker_url = kombu_broker_url(settings.broker_url)  # type: ignore[misc]
    storage = make_storage(settings.storage, settings.redis)
    return Coordinator(settings, registry, client, make_dispatcher(app, client), storage)
