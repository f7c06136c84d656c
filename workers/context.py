"""The one worker-process context: settings, Redis, registry, storage and the InstanceHost."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from regina.config import Settings, process_settings
from regina.delegation import Delegation
from regina.factory_hooks import load_hooks
from regina.host import InstanceHost
from regina.lifecycle import Coordinator
from regina.member_writes import answer as reply
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.registry_sync import RegistryFollower, start_reload_listener, warn_missing_keys
from regina.runs.cancel import listen as cancel_listener
from regina.secrets import add_secret, install_log_redaction
from storage import make_storage
from workers.amqp import make_dispatcher
from workers.celery_app import app
from workers.dispatcher import CeleryDispatcher
from workers.interrupt import greenlet_interrupter
from workers.transport import set_step_starts

log = logging.getLogger("regina.worker")


@dataclass
class WorkerContext:
    """Everything a worker process shares between its greenlets."""

    settings: Settings
    client: redis.Redis
    member_id: str
    host: InstanceHost
    dispatcher: CeleryDispatcher
    coordinator: Coordinator
    follower: RegistryFollower

    def reply(self, token: str | None, answer: dict[str, Any]) -> None:
        """Answer a command on its reply list (the coordinator BLPOPs it)."""
        if answer.get("ok"):
            reply(self.client, token, answer.get("data"))
        else:
            reply(self.client, token, error=str(answer.get("error")))


_context: WorkerContext | None = None


def init_context(member_id: str, concurrency: int | None = None) -> WorkerContext:
    """Build the context once per worker process (at celeryd_after_setup)."""
    global _context
    install_log_redaction()
    settings = process_settings()
    add_secret(settings.auth_token)
    client = connect(settings.redis, concurrency or settings.concurrency)
    registry = AgentRegistry(settings)
    registry.load()
    follower = start_reload_listener(client, registry)
    warn_missing_keys(registry)
    storage = make_storage(settings.storage, settings.redis)
    dispatcher = make_dispatcher(app, client)
    coordinator = Coordinator(settings, registry, client, dispatcher, storage)
    delegation = Delegation(coordinator, client, member_id)
    host = InstanceHost(
        settings, registry, client, storage, load_hooks(settings.factory), member_id, greenlet_interrupter, delegation
    )
    cancel_listener(client, host.cancel_local)
    set_step_starts(host)  # a step's take starts its run when the instance is free (transport.py)
    _context = WorkerContext(settings, client, member_id, host, dispatcher, coordinator, follower)
    return _context


def current() -> WorkerContext | None:
    """The worker's context, or None before the worker's setup signal built it."""
    return _context


def context() -> WorkerContext:
    """The worker's context; fails loudly if the worker did not start through its signals."""
    if _context is None:
        raise RuntimeError("worker context not initialised (start workers with `regina worker`)")
    return _context
