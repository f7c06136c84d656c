"""The web's chat, cut short at a chosen point, with the same core calls the route makes.

`open_run_and_stop` is a web process killed with -9 right after the chat's open script recorded
the run and before the step was published: `RunService._start` up to `RunStore.open`, then
nothing (no `_started`: no placement, no publish, and no `_never_queued`, which a killed process
does not run either).
"""

from __future__ import annotations

from regina import idempotency, ids
from regina.config import Settings
from regina.lifecycle import Coordinator
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from regina.runs.store import Idempotency
from workers.celery_app import app as celery_app
from workers.dispatcher import CeleryDispatcher


def coordinator(redis_url: str, agents_dir: str) -> Coordinator:
    """A web process's Coordinator on the cluster's Redis (this test process is the web)."""
    settings = Settings(redis=redis_url, agents_dir=agents_dir)
    registry = AgentRegistry(settings)
    registry.load()
    client = connect(settings.redis)
    return Coordinator(settings, registry, client, CeleryDispatcher(celery_app, client), None)


def open_run_and_stop(
    coord: Coordinator, instance_id: str, message: str, idempotency_key: str | None = None, stream: bool = False
) -> str:
    """Record a chat run as the web does (its step message built and handed to the open script,
    the Idempotency-Key claimed with the body `{"message": message}`) and stop there; the run id.
    On an instance not started on a live member the open pushes nothing: the run is `queued` with
    no step anywhere."""
    run_id = ids.new_run_id()
    route = "chat-stream" if stream else "chat"
    claim = None
    if idempotency_key is not None:
        claim = Idempotency(
            idempotency.redis_key(route, instance_id, idempotency_key),
            idempotency.body_hash({"message": message}),
            idempotency.TTL,
        )
    step = coord.dispatcher.step_message(instance_id, run_id, message, stream) or ""
    opened = coord.runs.store.open(instance_id, run_id, "queue", None, claim, step)
    assert opened.kind == "ok", opened
    return run_id
