"""The worker's Celery signal handlers: join the cluster, renew membership, suspend idle
instances, sweep for orphans, leave.

Imported by a starting worker only (`workers.celery_app.WORKER_MODULES`), never by a publisher.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import redis
from celery import signals
from gevent import monkey

from regina import keys
from regina.cluster.membership import Membership
from regina.cluster.orphans import build_indexes, release_previous_incarnation, sweep_orphans
from regina.cluster.unattached import UnattachedClaims
from regina.ids import new_token
from regina.local_copies import remove_stale_copies
from regina.metrics import (
    QUEUE_DEPTH,
    WORKER_INSTANCES,
    WORKER_MEMORY,
    WORKER_TOOL_PROCESSES,
    process_exited,
    serve_worker_metrics,
)
from regina.outage import Outage
from regina.runs.lost import sweep_lost_runs
from regina.runtime.models.setup import preload_litellm
from regina.runtime.tools.process import resident_bytes
from workers import amqp, amqp_consumer
from workers.celery_app import app
from workers.context import context, current, init_context
from workers.step_strategy import flush_task_events, held_runs
from workers.transport import configure_worker, rekick

log = logging.getLogger("regina.worker")

amqp_consumer.install(app)  # before the worker builds its consumer (this module is imported first)

_state: dict[str, Any] = {"stopping": False, "greenlets": []}
#: Orphan sweeps under way (not asleep): the shutdown waits for these (see _shutdown).
_sweeping: set[gevent.Greenlet] = set()


@contextmanager
def _sweep() -> Iterator[None]:
    _sweeping.add(gevent.getcurrent())
    try:
        yield
    finally:
        _sweeping.discard(gevent.getcurrent())


@signals.celeryd_init.connect
def _size_pools(sender: str, conf: Any, options: dict[str, Any], **kwargs: Any) -> None:
    """Size the broker pools from this worker's concurrency before any connection exists, and
    consume instance queues through the member's ready list (workers/transport.py) — or, on
    RabbitMQ, with push consumers and a heartbeat under memberTtl (workers/amqp.py)."""
    concurrency = int(options.get("concurrency") or conf.worker_concurrency or 1)
    if amqp.is_amqp(str(conf.broker_url)):
        from regina.config import process_settings

        amqp.configure_worker(conf, concurrency, process_settings().member_ttl)
    else:
        configure_worker(conf, str(sender), concurrency)


@signals.setup_logging.connect
def _logging(loglevel: Any = None, **kwargs: Any) -> None:
    """Regina's log format (regina/logs.py) instead of Celery's own."""
    from regina.config import load_settings
    from regina.logs import configure

    settings = load_settings()
    configure("worker", settings.log_level, settings.log_format)


def _or_exit(what: str, start: Callable[[], None]) -> None:
    """Run a start-up step; a failure ends the process (exit status 2): Celery only logs what a
    signal handler raises and would go on as a worker that never joins the cluster (looking
    healthy to a platform, serving nothing)."""
    try:
        start()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # An outage, not a bug: one line naming where it looked (a traceback here is 55 lines).
        from regina.config import process_settings
        from regina.config_sources import without_password

        url = without_password(process_settings().redis)
        log.critical("worker %s failed: Redis at %s is unreachable (%s); exiting", what, url, exc)
        logging.shutdown()
        os._exit(2)
    except Exception:
        log.critical("worker %s failed; exiting", what, exc_info=True)
        logging.shutdown()
        os._exit(2)


@signals.celeryd_after_setup.connect
def _setup(sender: str, instance: Any, **kwargs: Any) -> None:
    """The member id is the Celery node name; consume the member's own command queue."""
    _or_exit("start-up", lambda: _set_up(str(sender), instance))


def _set_up(member_id: str, instance: Any) -> None:
    ctx = init_context(member_id, getattr(instance, "concurrency", None))
    # An earlier process under this member id left names of queues this one does not consume yet.
    ctx.client.delete(keys.member_ready(member_id))
    if isinstance(ctx.dispatcher, amqp.AmqpDispatcher):
        # Consumed on a channel of its own, not Celery's task channel (workers/amqp_consumer.py).
        instance.app.amqp.queues.deselect(keys.member_queue(member_id))
    else:
        instance.app.amqp.queues.select_add(keys.member_queue(member_id))
    log.info("member %s (vfs %s, storage %s)", member_id, ctx.settings.vfs_dir, ctx.settings.storage.type or "none")


@signals.worker_ready.connect
def _ready(sender: Any, **kwargs: Any) -> None:
    """Join the cluster (`_join`)."""
    _or_exit("joining the cluster", _join)


def _join() -> None:
    """Register as a member and start the heartbeat and idle-sweep greenlets."""
    ctx = context()
    address = ctx.settings.member_address or socket.gethostname()
    membership = Membership(ctx.client, ctx.member_id, address, ctx.settings.member_ttl)
    build_indexes(ctx.client)  # once per cluster: data written before the indexes existed
    release_previous_incarnation(ctx.client, ctx.member_id, ctx.dispatcher.restore_unacked)
    remove_stale_copies(ctx.client, ctx.settings, ctx.member_id)
    membership.register(0)
    _state["membership"] = membership
    # LiteLLM's import (seconds of CPU) after joining, not before: "ready" does not wait for
    # it, and the first chat step waits for the rest of it (regina/runtime/models/setup.py).
    gevent.spawn(_preload_litellm)
    _state["heartbeat"] = gevent.spawn(_heartbeat_loop, membership)
    # The sweeps: the shutdown waits for the one under way (see _shutdown).
    _state["greenlets"] = [gevent.spawn(_idle_loop), gevent.spawn(_orphan_loop)]
    # LiteLLM, Celery and friends leave ~300 000 long-lived objects; keep the cyclic GC from scanning
    # them again in every full collection (each one a pause in every running step).
    gc.collect()
    gc.freeze()
    # SIGHUP reloads the agent registry everywhere (Celery's own handler would restart the worker
    # and suspend every instance it holds).
    ctx.follower.install_sighup()
    if ctx.settings.metrics_port is not None:
        serve_worker_metrics(ctx.settings.metrics_port, ctx.settings.host)
        log.info("metrics on http://%s:%d/metrics", ctx.settings.host, ctx.settings.metrics_port)
    log.info("member %s ready (pid %d)", ctx.member_id, os.getpid())


def _preload_litellm() -> None:
    """The imports start-up leaves out (seconds of CPU), one module at a time between the
    worker's other greenlets: the MCP SDK, then LiteLLM."""
    t0 = time.monotonic()
    try:
        preload_litellm(gevent.idle, before=("regina.mcp.toolset",))
    except Exception:
        log.exception("importing LiteLLM or the MCP SDK failed; their first use will try again")
        return
    gc.collect()
    gc.freeze()  # LiteLLM's objects too (see _ready)
    log.info("LiteLLM and the MCP SDK imported in %.1f s (in the background)", time.monotonic() - t0)


def _heartbeat_loop(membership: Membership) -> None:
    ctx = context()
    sweep_copies = False  # taken for dead and back: local copies to check (until that succeeds)
    outage = Outage("membership renewal", log)
    amqp_broker = isinstance(ctx.dispatcher, amqp.AmqpDispatcher)
    unattached = UnattachedClaims(ctx.client, ctx.member_id) if amqp_broker else None
    while True:
        gevent.sleep(ctx.settings.member_heartbeat)
        if _state["stopping"]:
            _leaving_heartbeat(membership, outage)
            continue
        try:
            rejoined = membership.renew(len(ctx.host.active), held_runs())
            sweep_copies = sweep_copies or rejoined
            # Instances that moved while this worker was cut off or paused: let go of them (below),
            # and put back no ready entries for their new owner's steps.
            stale = ctx.host.stale_instances()
            if rejoined and not amqp_broker:
                moved = {iid for iid, _epoch in stale}
                queues = [keys.instance_queue(iid) for iid in list(ctx.host.active) if iid not in moved]
                put_back = rekick(ctx.client, keys.member_ready(ctx.member_id), queues)
                log.warning(
                    "member %s was taken for dead and is back: %d waiting step(s) of its %d instance(s) "
                    "put back on its ready list",
                    ctx.member_id,
                    put_back,
                    len(queues),
                )
            _queue_gauges(ctx)
            for iid, epoch in stale:
                log.warning("instance %s moved on from epoch %d: releasing it", iid, epoch)
                ctx.dispatcher.send_command(ctx.member_id, "release", {"instanceId": iid, "epoch": epoch}, None)
            if unattached is not None:
                _attach_unattached(ctx, unattached, {iid for iid, _epoch in stale})
            outage.ok()
        except Exception as exc:
            outage.failed(exc)
            continue
        if sweep_copies:
            # What start-up removes: the copies of instances that moved or were deleted while this
            # member was taken for dead (the attached ones go with their release).
            try:
                ctx.host.remove_stale_copies()
                sweep_copies = False
            except Exception:
                log.exception("removing stale local copies failed; tried again at the next heartbeat")


def _attach_unattached(ctx: Any, claims: UnattachedClaims, moved: set[str]) -> None:
    """RabbitMQ: send this member the attach of each instance claimed for it whose coordinator
    never published one (died between its claim and the publish: regina/cluster/unattached.py),
    as that coordinator would have; left so, the instance stayed `started` here and its chats
    queued steps nobody consumed until they timed out. On Redis the claim pushes the attach itself."""
    here = {iid for iid in list(ctx.host.active) if iid not in moved} | set(ctx.host.loading)
    for claim in claims.due(here):
        log.warning(
            "instance %s: claimed for %s at epoch %d and never attached (its coordinator is gone?): attaching it",
            claim.instance_id,
            ctx.member_id,
            claim.epoch,
        )
        payload: dict[str, Any] = {"instanceId": claim.instance_id, "epoch": claim.epoch}
        if claim.never_attached:
            payload["spawnOf"] = claim.definition_id  # its queue is created with the attach's publish
        ctx.dispatcher.send_command(ctx.member_id, "attach", payload, None)


def _leaving_heartbeat(membership: Membership, outage: Outage) -> None:
    """While a warm shutdown finishes its steps and backs its instances up, the member stays
    alive (its key renewed) and out of placement: a key let lapse made its instances orphans,
    re-homed and their running steps run again elsewhere, while they still ran here. `_shutdown`
    kills this loop before it deregisters."""
    try:
        membership.renew_leaving(held_runs())
    except Exception as exc:
        outage.failed(exc)


def _queue_gauges(ctx: Any) -> None:
    """Steps waiting for this worker, its instance count, and its memory with its tool processes
    counted in (per heartbeat). Every waiting step of a held queue has one entry on the member's
    ready list (workers/transport.py): one LLEN counts them, whatever the number of instances.
    On RabbitMQ the steps wait in its queues, and RabbitMQ's own metrics show their depths."""
    if not isinstance(ctx.dispatcher, amqp.AmqpDispatcher):
        QUEUE_DEPTH.labels(ctx.member_id).set(int(ctx.client.llen(keys.member_ready(ctx.member_id))))
    WORKER_INSTANCES.labels(ctx.member_id).set(len(ctx.host.active))
    children = ctx.host.tool_pids()
    WORKER_TOOL_PROCESSES.labels(ctx.member_id).set(len(children))
    WORKER_MEMORY.labels(ctx.member_id, "worker").set(resident_bytes([os.getpid()]))
    WORKER_MEMORY.labels(ctx.member_id, "tool_processes").set(resident_bytes(children))


def _idle_loop() -> None:
    """Suspend idle instances through our own command queue (detach happens in the consumer)."""
    ctx = context()
    timeout = ctx.settings.idle_timeout
    interval = min(max(timeout / 4, 0.2), 5.0) if timeout > 0 else 5.0
    # When each suspend was asked for: asked again after `again` seconds if the instance is
    # still here and idle (a suspend whose backup failed leaves it started).
    requested: dict[str, float] = {}
    again = max(timeout, 30.0)
    outage = Outage("idle sweep", log)
    while not _state["stopping"]:
        gevent.sleep(interval)
        if _state["stopping"]:
            break  # the shutdown suspends every instance itself
        try:
            ctx.host.park_idle(ctx.settings.vfs_park_after)
            ctx.host.report_sizes()
            idle = ctx.host.idle_instances()
            now = time.monotonic()
            requested = {i: t for i, t in requested.items() if i in ctx.host.active and now - t < again}
            for iid in idle:
                act = ctx.host.active.get(iid)  # dropped or deleted while the round read Redis
                if iid in requested or act is None:
                    continue
                requested[iid] = now
                log.info("instance %s idle for more than %gs: suspending", iid, timeout)
                payload = {"instanceId": iid, "epoch": act.epoch}
                ctx.dispatcher.send_command(ctx.member_id, "suspend", payload, new_token())
            outage.ok()
        except Exception as exc:
            outage.failed(exc)


def _orphan_loop() -> None:
    """Every memberHeartbeat seconds one member sweeps for instances whose member died, and one
    for runs nothing holds any more (regina/runs/lost.py)."""
    ctx = context()
    settings = ctx.settings
    every = settings.member_heartbeat
    orphans, lost = Outage("orphan sweep", log), Outage("lost-run sweep", log)
    while not _state["stopping"]:
        gevent.sleep(every)
        if _state["stopping"]:
            break  # a leaving member places nothing (its sweep would outlive it, see _shutdown)
        try:
            with _sweep():
                sweep_orphans(ctx.client, ctx.coordinator.ensure_active, ctx.dispatcher.waiting_instances, every)
            orphans.ok()
        except Exception as exc:
            orphans.failed(exc)
        try:
            sweep_lost_runs(
                ctx.client,
                ctx.dispatcher.waiting_instances,
                every,
                settings.limits.lost_run_after,
                settings.member_ttl,
                settings.run_retention,
            )
            lost.ok()
        except Exception as exc:
            lost.failed(exc)


def deferred(handler: Callable[..., None]) -> Callable[..., None]:
    """`handler`, run in a greenlet of its own: for every signal handler that does I/O.

    A Python signal handler (and so whatever Celery sends from one, like worker_shutting_down)
    runs under gevent inside an event-loop callback, where anything that would switch (a Redis
    call, a lock, starting a thread) raises BlockingSwitchOutError. The returned handler only
    schedules the work; it runs on the hub's next turn, where it may block. Its errors are
    logged (there is no caller to raise them to).
    """

    def run(*args: Any, **kwargs: Any) -> None:
        try:
            handler(*args, **kwargs)
        except Exception as exc:
            Outage(f"signal handler {handler.__name__}", log).failed(exc)

    @functools.wraps(handler)
    def schedule(*args: Any, **kwargs: Any) -> None:
        gevent.spawn(run, *args, **kwargs)

    return schedule


@signals.worker_shutting_down.connect
def _shutdown_deadline(**kwargs: Any) -> None:
    """End the process `shutdownTimeout` seconds after a warm shutdown began, whatever it still
    waits for (a Redis that is down holds Celery's consumer and every backup forever). An OS
    thread, not a greenlet: it must fire even when the gevent hub is blocked. It writes to fd 2
    itself because logging's locks are gevent's."""
    from regina.config import process_settings

    seconds = process_settings().shutdown_timeout

    def watch() -> None:
        monkey.get_original("time", "sleep")(seconds)
        os.write(2, f"regina worker: warm shutdown did not finish in {seconds:g} s; exiting\n".encode())
        os._exit(1)

    if not _state.get("deadline"):
        _state["deadline"] = True
        monkey.get_original("_thread", "start_new_thread")(watch, ())


@signals.worker_shutting_down.connect
@deferred
def _shutting_down(**kwargs: Any) -> None:
    """Leave placement at once (new and re-homed instances go elsewhere, or wait for a worker);
    our own instances stay ours until the shutdown has backed them up. Celery sends this from its
    signal handler; the greenlet runs while the warm shutdown waits for the pool."""
    _state["stopping"] = True
    ctx = current()
    if ctx is not None and ctx.host.equipment.delegation is not None:
        ctx.host.equipment.delegation.stopping = True  # a caller waiting on a child held here gives up
    membership = _state.get("membership")
    if membership is not None:
        membership.leave_placement()


@signals.worker_shutdown.connect
def _shutdown(sender: Any, **kwargs: Any) -> None:
    """After running steps finished: back up and release every instance, then leave."""
    _state["stopping"] = True
    ctx = current()
    # A sweep under way finishes first: an orphan sweep places instances while holding their
    # activation lock, and a process exiting in the middle left that lock for its whole TTL (every
    # chat to the instance waited that long; seen when a suspend here stranded a queued step). One
    # that takes longer than a worker's reply is stopped: its lock is released on the way out.
    sweeps = _state["greenlets"]
    gevent.killall([g for g in sweeps if g not in _sweeping])  # asleep: nothing to finish
    gevent.joinall(list(_sweeping), timeout=ctx.settings.limits.worker_reply_timeout if ctx else 0)
    gevent.killall(sweeps)
    flush_task_events()
    if ctx is None:
        return
    count = len(ctx.host.active)
    ctx.host.suspend_all()
    membership = _state.get("membership")
    heartbeat = _state.get("heartbeat")
    if heartbeat is not None:
        heartbeat.kill()  # no renewal may follow the deregister
    if membership is not None:
        membership.deregister()
    process_exited(os.getpid())
    log.info("member %s left the cluster (%d instance(s) suspended)", ctx.member_id, count)
