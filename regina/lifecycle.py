"""The coordinator: spawn, place, resume, suspend, delete and chat — what the web process does.

Any web process can run any of these for any instance: all state is in Redis. Work on an
instance happens on its owning worker; the coordinator reaches it through the Dispatcher and
waits for answers on a Redis reply list.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

import redis

from regina import idempotency, ids, keys
from regina.activation_lock import ActivationLock, Seen
from regina.backups import Backups
from regina.cluster.membership import is_alive, live_members
from regina.cluster.placement import place
from regina.config import Settings
from regina.dispatch import Dispatcher
from regina.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    ReginaError,
    ReplyTimeout,
    StorageError,
    Unavailable,
)
from regina.instances import InstanceRecord, InstanceStore
from regina.journal import Journal
from regina.metrics import SPAWNS
from regina.registry import AgentRegistry
from regina.runs.service import RunService
from regina.runtime.session import Session
from regina.storage import Storage
from regina.usage import read_with_usage
from regina.vfs.memory import MemoryVFS

log = logging.getLogger("regina.coordinator")


class Coordinator:
    """Instance lifecycle and runs, driven from any web process."""

    def __init__(
        self,
        settings: Settings,
        registry: AgentRegistry,
        client: redis.Redis,
        dispatcher: Dispatcher,
        storage: Storage | None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.r = client
        self.dispatcher = dispatcher
        self.storage = storage
        self.store = InstanceStore(client)
        self.locks = ActivationLock(client)
        self.runs = RunService(self)

    # -- commands to members -------------------------------------------------------------

    def command(self, member: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a command to a member and wait for its answer (Unavailable on timeout; NotFound
        when the instance it was about was deleted meanwhile)."""
        token = ids.new_token()
        self.dispatcher.send_command(member, name, payload, token)
        try:
            return self._answer(member, name, token)
        except Unavailable as exc:
            self._raise_if_deleted(str(payload.get("instanceId") or ""), exc)
            raise

    def _raise_if_deleted(self, instance_id: str, exc: Exception) -> None:
        """NotFound when the instance is gone: a worker that could not attach or read an instance
        deleted meanwhile failed because of the delete, not because it is unavailable."""
        if instance_id and (self.r.exists(keys.deleting(instance_id)) or self.store.get(instance_id) is None):
            raise NotFound(f"instance {instance_id!r} not found") from exc

    def _answer(self, member: str, name: str, token: str) -> dict[str, Any]:
        """Wait for the answer to the command sent with `token` (Unavailable on timeout)."""
        timeout = self.settings.limits.worker_reply_timeout
        got = self.r.blpop([keys.reply(token)], timeout=timeout)
        if got is None:
            raise ReplyTimeout(f"worker {member} did not answer {name!r} within {timeout:g}s")
        answer = cast(dict[str, Any], json.loads(cast(tuple[str, str], got)[1]))
        if not answer.get("ok"):
            raise Unavailable(f"worker {member} could not {name}: {answer.get('error')}")
        return answer

    # -- instances -----------------------------------------------------------------------

    def get(self, instance_id: str) -> InstanceRecord:
        """The record, or NotFound."""
        rec = self.store.get(instance_id) if ids.is_valid_instance_id(instance_id) else None
        if rec is None:
            raise NotFound(f"instance {instance_id!r} not found")
        return rec

    def show(self, instance_id: str) -> InstanceRecord:
        """The record with the instance's usage so far (its running run's tokens included, SPEC
        §12), or NotFound."""
        rec = read_with_usage(self.r, instance_id) if ids.is_valid_instance_id(instance_id) else None
        if rec is None:
            raise NotFound(f"instance {instance_id!r} not found")
        return rec

    def spawn_once(self, definition_id: str, key: str, digest: str) -> dict[str, Any]:
        """`spawn` under an Idempotency-Key: the same key and body answer the same instance."""
        self.registry.get(definition_id)
        return idempotency.once(
            self.r,
            idempotency.redis_key("spawn", definition_id, key),
            digest,
            lambda: self.spawn(definition_id).public(),
            self.settings.limits.worker_reply_timeout * 2,
            "spawn",
        )

    def spawn(self, definition_id: str, instance_id: str | None = None) -> InstanceRecord:
        """Create an instance of a definition on a live member and wait until it is attached.
        `instance_id`: one the caller made (`ids.new_instance_id`) and recorded first."""
        definition = self.registry.get(definition_id)
        member = self._place()
        instance_id = instance_id or ids.new_instance_id(definition.id)
        token = ids.new_token()
        attach = {"instanceId": instance_id, "epoch": 1, "spawnOf": definition.id}
        # The record's script pushes the attach too (one round trip less), where the broker allows.
        message = self.dispatcher.command_message(member, "attach", attach, token)
        rec = self.store.create(instance_id, definition.id, member, message)
        try:
            if message is None:
                self.dispatcher.send_command(member, "attach", attach, token)
            self._answer(member, "attach", token)
        except ReginaError:
            self.store.delete(instance_id, definition.id)
            self._purge_quietly(instance_id)  # a queue the attach's publish created (RabbitMQ)
            raise
        SPAWNS.labels(definition.id).inc()
        return rec

    def _purge_quietly(self, instance_id: str) -> None:
        """Delete the queue of an instance that was never attached; a failure only logs (the
        spawn's own error is what the caller gets)."""
        try:
            self.dispatcher.purge(instance_id)
        except Exception as exc:
            log.warning("instance %s: its queue could not be deleted after a failed spawn: %r", instance_id, exc)

    def instances(self, definition_id: str | None = None) -> list[InstanceRecord]:
        """Instances, suspended ones included (of one definition when given).

        Raises:
            NotFound: `definition_id` names no definition and has no instances (instances
                outlive their definition: a file removed, or not loadable in this process).
        """
        records = self.store.all(definition_id)
        if definition_id is not None and not records and definition_id not in self.registry:
            self.registry.get(definition_id)
        return records

    def ensure_active(self, instance_id: str) -> InstanceRecord:
        """Make sure the instance is started on a live member: resume it or re-home an orphan."""
        rec = self.get(instance_id)
        if rec.status == "started" and is_alive(self.r, rec.member):
            return rec
        with self._activation_lock(instance_id) as seen:
            return self._activate(instance_id, seen)

    def _activate(self, instance_id: str, seen: Seen | None = None) -> InstanceRecord:
        """`seen`: the instance as read when the activation lock was taken (else read here)."""
        limits = self.settings.limits
        timeout = limits.worker_reply_timeout
        give_up = time.monotonic() + timeout + limits.placement_wait
        backoff = Backoff()
        suspending_since: float | None = None
        while True:
            now, seen = seen or self.locks.read(instance_id), None
            rec, alive = now.record, now.alive
            if rec is None:
                raise NotFound(f"instance {instance_id!r} not found")
            if rec.status == "started" and alive:
                return rec
            if time.monotonic() > give_up:
                waited = timeout + limits.placement_wait
                raise Unavailable(f"instance {instance_id!r} could not be activated within {waited:g}s; try again")
            if rec.status == "suspending" and alive:
                suspending_since = self._wait_suspending(rec, suspending_since)
                backoff.sleep()  # its owner is finishing a suspend; resume right after
                continue
            # Its member lives and takes instances: what placement would prefer, without asking it.
            member = rec.member if alive and now.placeable else self._place(prefer=rec.member, until=give_up)
            failover = bool(rec.member) and not alive
            token = ids.new_token()
            attach = {"instanceId": instance_id, "epoch": rec.epoch + 1}  # the epoch the claim makes
            # The claim pushes the attach too (one round trip less, and a coordinator that dies
            # after the claim leaves an attach on its way). A failover requeues the dead owner's
            # taken steps right after it; the attaching member does too before it consumes the
            # queue (each step moves once, whoever moves it), in case this process is gone by then.
            message = self.dispatcher.command_message(member, "attach", attach, token)
            epoch = self.store.claim(instance_id, member, expected_epoch=rec.epoch, command=message)
            if epoch == -2:
                raise NotFound(f"instance {instance_id!r} not found")
            if epoch == -1:
                backoff.sleep()  # someone else changed it meanwhile: look again
                continue
            if failover:
                moved = self.dispatcher.restore_unacked(instance_id)
                log.warning(
                    "instance %s: member %s is gone; moving it to %s (epoch %d, %d step(s) requeued)",
                    instance_id,
                    rec.member,
                    member,
                    epoch,
                    moved,
                )
            try:
                if message is None:
                    self.dispatcher.send_command(member, "attach", attach, token)
                self._answer(member, "attach", token)
            except Unavailable as exc:
                self._raise_if_deleted(instance_id, exc)
                if is_alive(self.r, member) or time.monotonic() > give_up:
                    raise
                log.warning("instance %s: %s left before attaching it; placing it again", instance_id, member)
                continue
            return replace(rec, member=member, epoch=epoch, status="started")  # what the attach wrote

    def _wait_suspending(self, rec: InstanceRecord, since: float | None) -> float:
        """When an activation first saw the instance `suspending` on a live member (`since`);
        past half a reply timeout, the owner is asked to suspend it (again), once: an owner that
        no longer holds it (the suspend's last write failed) marks it suspended, one still
        suspending it answers after that suspend (regina/host.py)."""
        now = time.monotonic()
        if since is None:
            return now
        if now - since > self.settings.limits.worker_reply_timeout / 2:
            self._nudge_suspend(rec)
            return math.inf  # once per activation
        return since

    def _nudge_suspend(self, rec: InstanceRecord) -> None:
        """Ask the member an instance stays `suspending` on to suspend it (answer not awaited)."""
        log.warning("instance %s: still suspending on %s; asking it to suspend again", rec.instance_id, rec.member)
        try:
            payload = {"instanceId": rec.instance_id, "epoch": rec.epoch}
            self.dispatcher.send_command(rec.member, "suspend", payload, None)
        except Exception as exc:  # noqa: BLE001 - the wait goes on (and ends with a 503 if it stays so)
            log.warning("instance %s: suspend not sent to %s: %r", rec.instance_id, rec.member, exc)

    def _place(self, prefer: str | None = None, until: float | None = None) -> str:
        """A live member; with none (a rolling restart, the only worker restarting) wait up to
        limits.placementWait (and never past `until`) for one to join instead of failing at once."""
        deadline = time.monotonic() + self.settings.limits.placement_wait
        if until is not None:
            deadline = min(deadline, until)
        pause = 0.05
        while True:
            try:
                return place(self.r, self.settings.placement, prefer=prefer)
            except Unavailable:
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    @contextmanager
    def _activation_lock(self, instance_id: str) -> Iterator[Seen]:
        """One coordinator at a time places an instance (regina/activation_lock.py: released by
        token); yields the instance as read when the lock was taken."""
        limits = self.settings.limits
        # The holder gives up placing at reply + placementWait and then waits at most one more
        # reply for the attach: hold (and wait for) the lock that long, so a waiter never fails
        # while a holder is still legitimately at work and the lock never expires under it.
        with self.locks.held(instance_id, 2 * limits.worker_reply_timeout + limits.placement_wait) as seen:
            yield seen

    def _touch(self, instance_id: str) -> None:
        """Reset the idle timer of an existing instance (NotFound otherwise): one round trip."""
        rec = self.store.touch_and_check(instance_id)[0] if ids.is_valid_instance_id(instance_id) else None
        if rec is None:
            raise NotFound(f"instance {instance_id!r} not found")

    def heartbeat(self, instance_id: str) -> None:
        """Reset the idle timer."""
        self._touch(instance_id)

    def resume(self, instance_id: str) -> InstanceRecord:
        """Start a suspended instance (no-op when started); resets the idle timer."""
        rec, alive = self.store.touch_and_check(instance_id) if ids.is_valid_instance_id(instance_id) else (None, False)
        if rec is None:
            raise NotFound(f"instance {instance_id!r} not found")
        if rec.status == "started" and alive:
            return rec
        with self._activation_lock(instance_id) as seen:
            return self._activate(instance_id, seen)

    def suspend(self, instance_id: str) -> bool:
        """Finish the running step, back up, release the queue, mark suspended.

        Returns False when the owner has not confirmed within workerReplyTimeout (it waits for a
        running step): the suspend is under way, not failed, and the record shows when it is done.
        """
        rec = self.get(instance_id)
        if rec.status == "suspended":
            return True
        if not is_alive(self.r, rec.member):
            self.store.fenced_set(instance_id, rec.epoch, status="suspended")
            return True
        try:
            self.command(rec.member, "suspend", {"instanceId": instance_id, "epoch": rec.epoch})
        except ReplyTimeout:
            now = self.store.get(instance_id)
            return now is None or now.status == "suspended"
        return True

    def delete(self, instance_id: str) -> None:
        """Tear down queue, VFS, backup and keys; then the instance's delegate children (it owns
        them: no other caller can reach them once it is gone)."""
        rec = self.get(instance_id)
        # Said first, so what fails because of this delete meanwhile is a 404, not a 503.
        self.r.set(keys.deleting(instance_id), "1", ex=max(1, int(2 * self.settings.limits.worker_reply_timeout)))
        try:
            children = cast(list[str], self.r.hvals(keys.delegates(instance_id)))
            self._tear_down(rec)
            # A delegation under way pairs its child before spawning it: one paired during the
            # tear-down re-made the pairing key (no TTL, nobody to delete it) and a child nobody owns.
            pipe = self.r.pipeline(transaction=True)
            pipe.hvals(keys.delegates(instance_id))
            pipe.delete(keys.delegates(instance_id))
            late = cast(list[str], pipe.execute()[0])
            children += [child for child in late if child not in children]
        finally:
            self.r.delete(keys.deleting(instance_id))
        for child in children:
            try:
                self.delete(child)
            except NotFound:
                pass  # deleted on its own already

    def _tear_down(self, rec: InstanceRecord) -> None:
        instance_id = rec.instance_id
        backups = Backups(self.r, self.storage) if self.storage is not None else None
        # Storage first: when it is down (StorageError, a 503) nothing has changed yet — the
        # instance is still served where it was, and the DELETE can simply be sent again. Past
        # this point nothing needs storage.
        if backups is not None:
            backups.delete_all(instance_id)
        # Its runs can no longer run: they end cancelled now (a running one is interrupted, so
        # its owner's delete below does not wait for the model).
        self.runs.store.end_all(instance_id)
        if rec.member and is_alive(self.r, rec.member):
            try:
                self.command(rec.member, "delete", {"instanceId": instance_id, "epoch": rec.epoch})
            except (Unavailable, NotFound) as exc:
                log.warning("delete %s: %s; removing its keys anyway", instance_id, exc)
        # Earlier owners may still keep a copy on their disks: every live member drops its own.
        for member in live_members(self.r):
            if member != rec.member:
                self.dispatcher.send_command(member, "delete", {"instanceId": instance_id}, None)
        # The queue before the record: a purge that fails (broker down, refused) leaves the record,
        # so the DELETE can be sent again instead of answering 404 over a queue left for good.
        self.dispatcher.purge(instance_id)
        self.store.delete(instance_id, rec.definition_id)
        self.dispatcher.purge(instance_id)  # again, last: a chat opened until the record went queued a step
        if backups is not None:
            # A checkpoint or suspend the owner committed between the first pass and its drop
            # (one stored after the record went is refused and deleted by its writer).
            try:
                backups.delete_all(instance_id)
            except StorageError as exc:
                log.warning("delete %s: a backup written meanwhile may be left in storage: %s", instance_id, exc)

    # -- chat ----------------------------------------------------------------------------

    def validate_message(self, body: Any) -> str:
        """The `message` of a chat/steer body, or a 400/413 naming the problem."""
        if not isinstance(body, dict):
            raise BadRequest('request body must be a JSON object like {"message": "…"}')
        message = body.get("message")
        if message is None:
            raise BadRequest("missing field 'message' (a non-empty string)")
        if not isinstance(message, str):
            raise BadRequest(f"field 'message' must be a string, got {type(message).__name__}")
        if not message.strip():
            raise BadRequest("field 'message' must not be empty")
        limit = self.settings.limits.max_message_chars
        if len(message) > limit:
            raise PayloadTooLarge(f"field 'message' has {len(message)} characters; the limit is {limit}")
        return message

    def start_run(self, instance_id: str, message: str, stream: bool = True) -> str:
        """Queue a chat run on the instance (resetting its idle timer); returns the run id."""
        return self.runs.start(instance_id, message, stream)

    def follow_run(self, run_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Yield a run's events after seq `after` until its terminal event."""
        return self.runs.follow(run_id, after)

    def chat(self, instance_id: str, message: str) -> dict[str, Any]:
        """Run a chat to its end; returns {text, usage, runId, finishReason}."""
        return self.runs.chat(instance_id, message)

    def steer(self, instance_id: str, message: str) -> str:
        """Queue a steering message for the running loop (or the next run); returns its steerId."""
        return self.runs.steer(instance_id, message)

    def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation, oldest first. Reading changes nothing: a suspended instance is read
        from its backup or its last owner's disk, and resumed only when neither is there."""
        rec = self.get(instance_id)
        if rec.status == "suspended":
            stored = self._stored_messages(rec)
            if stored is not None:
                return stored
        rec = self.ensure_active(instance_id)
        answer = self.command(rec.member, "messages", {"instanceId": instance_id, "epoch": rec.epoch})
        return cast(list[dict[str, Any]], answer.get("data") or [])

    def _stored_messages(self, rec: InstanceRecord) -> list[dict[str, Any]] | None:
        """A suspended instance's conversation without attaching it anywhere (None: not found)."""
        if self.storage is not None and not self.settings.factory:
            for _ in range(3):
                try:
                    found = self._from_storage(rec)
                except Exception:  # noqa: BLE001 - a backup and a journal of two moments: look again
                    found = None
                now = self.get(rec.instance_id)
                if (now.backup_key, now.backup_seq) == (rec.backup_key, rec.backup_seq):
                    if found is not None:
                        return found
                    break
                rec = now  # backed up meanwhile (resumed, run, suspended): its journal was trimmed
            else:
                return None  # it keeps changing: the caller resumes it and asks its worker
        if is_alive(self.r, rec.member):
            try:
                payload = {"instanceId": rec.instance_id, "epoch": rec.epoch}
                answer = self.command(rec.member, "messages", payload)
            except Unavailable:
                return None
            return cast(list[dict[str, Any]], answer.get("data") or [])
        return None

    def _from_storage(self, rec: InstanceRecord) -> list[dict[str, Any]] | None:
        """The conversation in the backup `rec` names plus the journal after it (None: no backup)."""
        assert self.storage is not None  # only called with storage
        journal = Journal(self.r)
        backup = Backups(self.r, self.storage).load(rec.instance_id, rec.backup_version, rec.backup_key)
        if backup is None and not (rec.backup_version == 0 and journal.entries(rec.instance_id)):
            return None
        vfs = MemoryVFS.from_snapshot(backup) if backup is not None else MemoryVFS()
        try:
            journal.replay(rec.instance_id, vfs, rec.backup_seq)
            return [dict(m) for m in Session(vfs).load()]
        finally:
            vfs.close()


class Backoff:
    """Sleeps that double from `first` up to `cap` seconds, for retry loops that poll Redis."""

    def __init__(self, first: float = 0.01, cap: float = 0.5) -> None:
        self.delay = first
        self.cap = cap

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
