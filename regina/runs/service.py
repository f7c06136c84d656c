"""Runs as the web side drives them (SPEC §12): start, follow, collect, steer, cancel, show.

Any web process can do any of these for any run: the run's state is in Redis (`RunStore`), its
events in a stream (`regina.runs.stream`). Placing the instance on a worker is the
Coordinator's job; this module asks it (`ensure_active`) when the instance is not served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from regina import idempotency, ids, keys
from regina.cluster.membership import is_alive
from regina.config import Settings
from regina.dispatch import Dispatcher
from regina.errors import Busy, Conflict, Gone, NotFound, ReginaError, StillRunning, TooManyRequests, Unavailable
from regina.instances import InstanceRecord, InstanceStore, record_from_hash
from regina.metrics import RUNS_STARTED, STEERS
from regina.runs.record import public
from regina.runs.steering import new_steer
from regina.runs.store import ENDED, Idempotency, Opened, RunStore, WhenBusy
from regina.runs.stream import TERMINAL, PendingRead, RunPublisher, read_event_batches, read_events_after

log = logging.getLogger(__name__)


class Placement(Protocol):
    """What runs need of the instance lifecycle (regina.lifecycle.Coordinator, which owns a
    RunService): its Redis, settings, dispatcher and instance records, and an instance served."""

    r: redis.Redis
    settings: Settings
    dispatcher: Dispatcher
    store: InstanceStore

    def ensure_active(self, instance_id: str) -> InstanceRecord: ...


@dataclass(frozen=True)
class IdemRequest:
    """An `Idempotency-Key` header and the hash of the body it came with."""

    key: str
    digest: str


#: How long one XREAD of a followed run waits (ms) before the follower checks the instance.
FOLLOW_BLOCK_MS = 500


class Following(Iterator[list[dict[str, Any]]]):
    """A run's events as `follow_known_batches` yields them, whose first wait may be sent
    already: its connection is given back by `close` (or the end of a `with`) also when nothing
    was read."""

    def __init__(self, events: Iterator[list[dict[str, Any]]], pending: PendingRead | None = None) -> None:
        self._events = events
        self._pending = pending

    def __next__(self) -> list[dict[str, Any]]:
        return next(self._events)

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
        if self._pending is not None:
            self._pending.discard()  # a no-op once read

    def __enter__(self) -> Following:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _up_to_terminal(batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The events of `batch` up to its terminal event, and whether there was one."""
    for n, event in enumerate(batch):
        if event.get("type") in TERMINAL:
            return batch[: n + 1], True
    return batch, False


def _zero_usage() -> dict[str, int]:
    return {"promptTokens": 0, "completionTokens": 0}


class RunService:
    """The run operations of the HTTP API, for one Coordinator."""

    def __init__(self, coordinator: Placement) -> None:
        self.coord = coordinator
        self.r = coordinator.r
        self.settings = coordinator.settings
        limits = self.settings.limits
        self.store = RunStore(self.r, self.settings.run_retention, limits.max_queued_runs, limits.max_steering)

    def _idem(self, route: str, scope: str, req: IdemRequest | None) -> Idempotency | None:
        if req is None:
            return None
        return Idempotency(idempotency.redis_key(route, scope, req.key), req.digest, idempotency.TTL)

    def start(
        self,
        instance_id: str,
        message: str,
        stream: bool = True,
        when_busy: WhenBusy = "queue",
        idem: IdemRequest | None = None,
        depth: int = 0,
        run_id: str | None = None,
    ) -> str:
        """Queue a chat run (or steer the busy one, or refuse, per `when_busy`); returns the id
        of the run whose events answer this request. `depth` > 0 marks a delegated run (how
        many delegations deep it is; `regina.delegation` reads it back). `run_id`: the new
        run's id, made by the caller (`ids.new_run_id`) to cancel it if the start is cut short."""
        return self._start(instance_id, message, stream, when_busy, idem, depth, run_id=run_id)[0]

    def start_following(
        self,
        instance_id: str,
        message: str,
        stream: bool = True,
        when_busy: WhenBusy = "queue",
        idem: IdemRequest | None = None,
    ) -> tuple[str, Following]:
        """`start`, and `follow_known_batches` of the run whose events answer this request (from
        its first event, kept following like a stream's with `stream`). A new run's first wait for
        events rides in the open's round trip. Close the iterator if it is not read to its end."""
        run_id, pending = self._start(instance_id, message, stream, when_busy, idem, 0, read_events=True)
        if pending is None:
            return run_id, Following(self.follow_known_batches(run_id, instance_id, keep_following=stream))
        try:
            return run_id, Following(
                self.follow_known_batches(run_id, instance_id, keep_following=stream, pending=pending), pending
            )
        except BaseException:
            pending.discard()
            raise

    def _start(
        self,
        instance_id: str,
        message: str,
        stream: bool,
        when_busy: WhenBusy,
        idem: IdemRequest | None,
        depth: int,
        read_events: bool = False,
        run_id: str | None = None,
    ) -> tuple[str, PendingRead | None]:
        if not ids.is_valid_instance_id(instance_id):
            raise NotFound(f"instance {instance_id!r} not found")
        route = "chat-stream" if stream else "chat"
        run_id = run_id or ids.new_run_id()
        steer = new_steer(message) if when_busy == "steer" else None
        # The step's broker message rides in the open (one round trip) when the instance is
        # served; a delegated run's depth must be on its record before any worker can start it.
        dispatcher = self.coord.dispatcher
        step = "" if depth else dispatcher.step_message(instance_id, run_id, message, stream) or ""
        claim = self._idem(route, instance_id, idem)
        opened = self.store.open(
            instance_id,
            run_id,
            when_busy,
            steer,
            claim,
            step,
            read_events=FOLLOW_BLOCK_MS if read_events else None,
        )
        try:
            return self._started(opened, instance_id, run_id, message, stream, depth, claim), opened.pending
        except BaseException:
            if opened.pending is not None:
                opened.pending.discard()
            raise

    def _started(
        self,
        opened: Opened,
        instance_id: str,
        run_id: str,
        message: str,
        stream: bool,
        depth: int,
        claim: Idempotency | None = None,
    ) -> str:
        """What `open` answered, acted on: the run id, or the error; an `ok` open's step is
        queued here unless the open pushed it (if it cannot be, the run ends with the error and
        the Idempotency-Key `claim` is let go: a retry does the work)."""
        refused = self._refused(opened, instance_id, stream)
        if refused is not None:
            raise refused
        if opened.kind != "ok":
            return opened.run_id  # an idempotent retry, or a steer into the busy run (no pending read)
        dispatcher = self.coord.dispatcher
        if opened.queued:
            RUNS_STARTED.labels("stream" if stream else "sync").inc()
            return run_id
        rec = opened.record
        try:
            if rec is None or rec.status != "started" or not opened.alive:
                rec = self.coord.ensure_active(instance_id)
            if depth:
                self.r.hset(keys.run_record(run_id), "depth", depth)
            dispatcher.enqueue_step(rec.instance_id, run_id, message, stream)
        except BaseException as exc:
            # The run was recorded but never queued: end it, so it does not look busy for ever
            # (nor answer its Idempotency-Key's retries), whatever stopped it.
            self._never_queued(instance_id, run_id, claim, exc)
            raise
        RUNS_STARTED.labels("stream" if stream else "sync").inc()
        return run_id

    def _refused(self, opened: Opened, instance_id: str, stream: bool) -> ReginaError | None:
        """The error an `open` answered with, if it refused (None for `ok`, `dup`, `steered`)."""
        kind, run_id = opened.kind, opened.run_id
        if kind == "missing":
            return NotFound(f"instance {instance_id!r} not found")
        if kind == "mismatch":
            return idempotency.mismatch("chat-stream" if stream else "chat")
        if kind == "expired":
            # Not a 404 (that says the instance is unknown) nor a 503 (retrying cannot help): the
            # run existed and is gone for good, and the request is not run twice for the key.
            return Gone(
                f"run {run_id}, which answered this Idempotency-Key, no longer exists (its record expired): "
                "its answer cannot be given again, and the request is not run twice for one key; "
                "send it with a new Idempotency-Key to run it anew"
            )
        if kind == "full":
            limit = self.settings.limits.max_queued_runs
            return TooManyRequests(
                f"instance {instance_id} already has {limit} runs queued or running (limits.maxQueuedRuns); "
                "retry later, or steer the running one",
                retry_after=2,
            )
        if kind == "steer-full":
            return self._steering_full(instance_id)
        if kind == "busy":
            return Busy(
                f"instance {instance_id} is busy with run {run_id} (whenBusy: reject); "
                "retry later, or send whenBusy: queue or steer",
                run_id,
            )
        return None

    def _never_queued(self, instance_id: str, run_id: str, claim: Idempotency | None, exc: BaseException) -> None:
        """End a run whose step could not be queued with the reason, and let go of its claim; best
        effort (Redis may be what failed): the caller raises `exc` either way."""
        reason = exc.message if isinstance(exc, ReginaError) else f"the run could not be queued: {type(exc).__name__}"
        try:
            publisher = RunPublisher(self.r, run_id, instance_id, self.settings.run_retention, seq=0)
            publisher.publish({"type": "error", "error": reason})
            if claim is not None:
                self.store.release_claim(claim, run_id)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.warning("run %s: could not end it after %r", run_id, exc, exc_info=True)

    def follow(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Yield a run's events after seq `after` until its terminal event, for as long as the run
        is queued or running on a served instance (a stream: the client holds the connection)."""
        return (event for batch in self.follow_batches(run_id, after) for event in batch)

    def follow_batches(self, run_id: str, after: int = 0) -> Iterator[list[dict[str, Any]]]:
        """`follow`, the events that arrived together at a time (`follow_known_batches`); of a
        run that has ended, the events after `after` at once (nothing more can come: no wait,
        and its instance is not woken for it)."""
        info = self._info(run_id)
        if info.get("status") in ENDED:
            return self._ended_batches(run_id, after)
        return self.follow_known_batches(run_id, info["instanceId"], after, keep_following=True)

    def _info(self, run_id: str) -> dict[str, str]:
        """The run's record, or 404 (also for an id no run can have)."""
        info = self.store.info(run_id) if ids.is_valid_run_id(run_id) else {}
        if not info:
            raise NotFound(f"run {run_id!r} not found (unknown or expired)")
        return info

    def _ended_batches(self, run_id: str, after: int) -> Iterator[list[dict[str, Any]]]:
        events = read_events_after(self.r, run_id, after)
        if events:
            yield events

    def follow_known(
        self,
        run_id: str,
        instance_id: str,
        after: int = 0,
        timeout: float | None = None,
        keep_following: bool = False,
        pending: PendingRead | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Like `follow` for a run whose instance is known. Between waits it checks the instance
        is still served: a step queued for an instance that was suspended meanwhile, or whose
        worker died, is resumed on a live worker. After `timeout` seconds (default
        `limits.requestTimeout`) without the end: StillRunning while the run is queued or running
        (Unavailable when it is neither), or, with `keep_following` (streams), go on following
        while it is queued or running. A run that ends while no event is read (`after` past its
        last one) ends the follow after that wait. `pending`: its first wait, already sent
        (`start_following`)."""
        for batch in self.follow_known_batches(run_id, instance_id, after, timeout, keep_following, pending):
            yield from batch

    def follow_known_batches(
        self,
        run_id: str,
        instance_id: str,
        after: int = 0,
        timeout: float | None = None,
        keep_following: bool = False,
        pending: PendingRead | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """`follow_known`, the events of one read at a time (never empty; the terminal event
        ends the last). On each wait that read nothing it checks, in the round trip that looks
        at the instance anyway, whether the run ended meanwhile: then the events after the last
        one seen are all there will be (none when `after` is past them), and the follow stops."""
        timeout = self.settings.limits.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        seen = after
        for batch in read_event_batches(self.r, run_id, after=after, block_ms=FOLLOW_BLOCK_MS, pending=pending):
            if batch is None:
                if self._ended_or_served(instance_id, run_id):
                    rest = self._rest_of_ended(run_id, after, seen)
                    if rest:
                        yield rest
                    return
                if time.monotonic() > deadline:
                    outlived = self._outlived(run_id, timeout)
                    if not (keep_following and isinstance(outlived, StillRunning)):
                        raise outlived
                continue
            seen = int(batch[-1].get("seq", seen))
            events, ended = _up_to_terminal(batch)
            yield events
            if ended:
                return

    def _outlived(self, run_id: str, timeout: float) -> Unavailable:
        """The error for a wait that ended before the run: StillRunning while the run is queued or
        running on a served instance (it goes on), else a plain 503."""
        status = (self.store.info(run_id) or {}).get("status", "")
        message = f"run {run_id} did not finish within {timeout:g}s"
        if status in ("queued", "running"):
            return StillRunning(f"{message}; it is still {status}: follow it at /runs/{run_id}", run_id, status)
        return Unavailable(message)

    def _rest_of_ended(self, run_id: str, after: int, seen: int) -> list[dict[str, Any]]:
        """The events of an ended run after seq `seen` (those that came since the last read, if
        any), to its terminal event. None at all is its end only for a follower that asked for
        what comes after the terminal event (`after` past it); a follower that was to see the
        terminal event and finds none gets the 503 of a run that ended without it."""
        rest, ended = _up_to_terminal(read_events_after(self.r, run_id, seen))
        if not ended and (after == 0 or seen > after):
            raise Unavailable(f"run {run_id} ended, but its terminal event is missing")
        return rest

    def _ended_or_served(self, instance_id: str, run_id: str) -> bool:
        """After a wait that read nothing: True when the run has ended (nothing more can come);
        else its instance is kept served (a step queued for an instance suspended meanwhile, or
        whose worker died, is resumed on a live worker) and False. The run's status rides in the
        read of the instance's record (no round trip more). A run whose record is gone: Gone —
        nothing would ever end the wait, and its instance is not woken for it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.run_record(run_id), "status")
        pipe.hgetall(keys.instance_record(instance_id))
        status, fields = pipe.execute()
        if status in ENDED:
            return True
        if status is None:
            raise Gone(f"run {run_id} no longer exists (its record expired while it was followed)")
        if not fields:
            raise Conflict(f"instance {instance_id} was deleted while run {run_id} was waiting")
        rec = record_from_hash(instance_id, fields)
        # A suspending owner is still serving: it finishes the running step before it lets go.
        if rec.status not in ("started", "suspending") or not is_alive(self.r, rec.member):
            self.coord.ensure_active(instance_id)
        return False

    def chat(
        self,
        instance_id: str,
        message: str,
        when_busy: WhenBusy = "queue",
        idem: IdemRequest | None = None,
    ) -> dict[str, Any]:
        """Run a chat to its end; returns {text, usage, runId, finishReason}."""
        run_id, batches = self.start_following(instance_id, message, stream=False, when_busy=when_busy, idem=idem)
        with batches:
            return self.collect(run_id, instance_id, (event for batch in batches for event in batch))

    def collect(self, run_id: str, instance_id: str, events: Iterator[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Follow a run from its first event (or read `events`, its `follow_known`) and return
        its final text and usage."""
        final: dict[str, Any] = {}
        for event in self.follow_known(run_id, instance_id) if events is None else events:
            final = event
        usage = final.get("usage") or _zero_usage()
        if final.get("type") == "error":
            error = str(final.get("error", "unknown error"))
            return {"text": f"Error: {error}", "usage": usage, "runId": run_id, "finishReason": "error"}
        return {
            "text": final.get("text", ""),
            "usage": usage,
            "runId": run_id,
            "finishReason": final.get("finishReason", "stop"),
        }

    def steer(self, instance_id: str, message: str, idem: IdemRequest | None = None) -> str:
        """Queue a steering message for the running loop (or the next run); returns its steerId."""
        kind, steer_id = (
            self.store.steer(instance_id, new_steer(message), self._idem("steer", instance_id, idem))
            if ids.is_valid_instance_id(instance_id)
            else ("missing", "")
        )
        if kind == "missing":
            raise NotFound(f"instance {instance_id!r} not found")
        if kind == "mismatch":
            raise idempotency.mismatch("steer")
        if kind == "full":
            raise self._steering_full(instance_id)
        if kind == "ok":  # not an idempotent replay ("dup")
            STEERS.inc()
        return steer_id

    def _steering_full(self, instance_id: str) -> TooManyRequests:
        limit = self.settings.limits.max_steering
        return TooManyRequests(
            f"instance {instance_id} already has {limit} steering messages waiting (limits.maxSteering); "
            "retry once its running step has taken them",
            retry_after=2,
        )

    def cancel(self, run_id: str) -> tuple[bool, str]:
        """(True, status) when the run was stopped; (False, final status) when it had ended."""
        if not ids.is_valid_run_id(run_id):
            raise NotFound(f"run {run_id!r} not found (unknown or expired)")
        try:
            return self.store.cancel(run_id)
        except KeyError:
            raise NotFound(f"run {run_id!r} not found (unknown or expired)") from None

    def show(self, run_id: str) -> dict[str, Any]:
        """The run's SPEC §12 record."""
        return public(run_id, self._info(run_id))
