"""Wire the core objects a web process uses (one set per Flask app)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.registry_sync import start_reload_listener
from storage import make_storage
from workers.app import app as celery_app
from workers.dispatcher import CeleryDispatcher


@dataclass
class Services:
    """The registry, Redis client and coordinator behind the HTTP API."""

    settings: Settings
    registry: AgentRegistry
    client: redis.Redis
    coordinator: Coordinator


def build_services(settings: Settings) -> Services:
    """Load the registry and connect to Redis, storage and the broker."""
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    start_reload_listener(client, registry)
    celery_app.conf.broker_url = settings.redis  # type: ignore[misc]
    dispatcher = CeleryDispatcher(celery_app, client)
    storage = make_storage(settings.storage, settings.redis)
    return Services(settings, registry, client, Coordinator(settings, registry, client, dispatcher, storage))
