"""The worker side of an instance: open its VFS, run its chat steps in order, back it up.

`InstanceHost` holds the instances a member owns. It knows nothing of Celery: `workers/`
calls `attach`, `run_step`, `suspend`, `delete` and `messages` from greenlets, and only after
it changed which queues it consumes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import redis

from regina import activation, keys, local_copies, metrics
from regina.attached import Active, FailedStep
from regina.backups import Backups, Snapshot
from regina.config import Settings
from regina.definitions import AgentDefinition
from regina.delegation import Delegation
from regina.equipment import Equipment
from regina.errors import NotFound, ReginaError, StaleEpoch
from regina.factory_hooks import FactoryHooks
from regina.fencing import Fence, stale_epochs
from regina.fifo_lock import FifoLock
from regina.instances import InstanceStore, new_record
from regina.journal import Journal, JournalVFS
from regina.local_copies import MEMBER_META
from regina.member_writes import MemberWrites, answer
from regina.outbound import Allowlist
from regina.registry import AgentRegistry
from regina.runs.context import InterrupterFactory, RunContext
from regina.runs.steering import decode_all, encode_all
from regina.runs.store import Begun, RunStore, parse_begun
from regina.runs.stream import RunPublisher
from regina.runtime.events import Usage
from regina.runtime.session import Session
from regina.runtime.sink import CANCELLED, RunProgress
from regina.runtime.tools.merge import InstanceTools
from regina.runtime.tools.process import warm_up
from regina.runtime.tools.runner import ToolRunner, snapshot_pool
from regina.sandbox_env import sandbox_env
from regina.step import StepRunner, not_saved
from regina.storage import Storage
from regina.vfs.sizes import live_bytes

#: Seconds a backup waits for its snapshot (SQLite copies about 500 MiB a second here).
SNAPSHOT_TIMEOUT = 300.0
log = logging.getLogger("regina.host")

AnyVFS = activation.AnyVFS


class NotHere(ReginaError):
    """Raised when a step arrives for an instance this member does not hold (anymore)."""


def step_error(exc: BaseException) -> str:
    """The error a failed step's run ends with: a Regina error's own message (it says what went
    wrong), otherwise only the kind of error (its text may hold anything; the worker log has it)."""
    if isinstance(exc, ReginaError):
        return exc.message
    return f"internal error: {exc.__class__.__name__} (details in the worker log)"


def _failed_usage(failed: FailedStep | None, recorded: str | None) -> Usage:
    """What a failed run spent: the progress its attempts recorded on its record (`spent`, as the
    lost-run sweep counts it), or what its step that failed here (`failed`) had spent when that is
    more (a model call completed since the last record: a one-step chat records none)."""
    spent = RunProgress.decode(recorded or "").usage
    if failed is not None:
        here = failed.progress.usage
        if here.prompt_tokens + here.completion_tokens > spent.prompt_tokens + spent.completion_tokens:
            return here
    return spent


class InstanceHost:
    """The instances one member owns, and everything done to them on that member."""

    def __init__(
        self,
        settings: Settings,
        registry: AgentRegistry,
        client: redis.Redis,
        storage: Storage | None,
        hooks: FactoryHooks,
        member_id: str,
        interrupter_factory: InterrupterFactory | None = None,
        delegation: Delegation | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.r = client
        self.storage = storage
        self.hooks = hooks
        self.member_id = member_id
        self.store = InstanceStore(client)
        self.runs = RunStore(client, settings.run_retention)
        self.backups = Backups(client, storage) if storage is not None else None
        self.journal = Journal(client) if storage is not None else None
        # Runs in progress here, by run id (the cancel listener looks them up).
        self.running: dict[str, RunContext] = {}
        # How a cancel interrupts a run blocked in a model call or a tool (the worker's is a
        # greenlet throw); None: the run stops at its next check.
        self.interrupter_factory = interrupter_factory
        self.steps = StepRunner(settings, client, self.runs, self.journal, self.running, interrupter_factory)
        self.active: dict[str, Active] = {}
        self._sizes_at = 0.0  # the last `report_sizes` (monotonic)
        self.writes = MemberWrites(client, member_id, settings.member_ttl)
        # Instances being attached: steps that arrive meanwhile wait on this gate.
        self.loading: dict[str, FifoLock] = {}
        # Steps taken from an instance's queue whose greenlet has not yet had its turn, by
        # instance; and runs started by the take of their step (`taken`), by run id.
        self._taken: dict[str, int] = {}
        self._prebegun: dict[str, tuple[int, Begun]] = {}
        self.env = sandbox_env(settings.allowed_env)
        self.equipment = Equipment(settings, self.env, Allowlist.parse(settings.outbound_allowlist), delegation)
        if settings.use_processes or any(d.use_processes for d in registry.list()):
            warm_up()  # the fork server imports the tool code once, off the event loop
        os.makedirs(settings.vfs_dir, exist_ok=True)

    # -- activation ----------------------------------------------------------------------

    def begin_attach(self, instance_id: str) -> None:
        """Close the gate for an instance about to be attached (call before consuming its queue).

        Steps that arrive meanwhile queue on it in arrival order. A new `Active` takes the gate as
        its step lock, so a step arriving just after the attach queues behind them, not in front
        of one woken a moment ago (a redelivered step then ran after the next run, inside its turn)."""
        if instance_id not in self.loading:
            gate = FifoLock()
            gate.acquire()
            self.loading[instance_id] = gate

    @metrics.timed(metrics.RESUMES, metrics.RESUME_SECONDS)
    def attach(
        self, instance_id: str, epoch: int, new_of: str | None = None, reply_to: str | None = None
    ) -> dict[str, Any]:
        """Open the instance here at `epoch`, restoring its VFS from storage when ours is older.

        `new_of`: the definition of an instance being spawned (nothing to restore or replay).
        `reply_to`: the token of the coordinator's reply list; an attach that succeeds answers
        on it ({"ok": true, "data": <the result>}) in its last write, a failed one leaves the
        answer to the caller."""
        failed = True
        try:
            result = self._attach(instance_id, epoch, new_of, reply_to)
            failed = False
            return result
        except StaleEpoch:
            raise
        except Exception:
            # The claim said `started` here; left so, the coordinator would queue steps on a
            # queue nobody reads (this member alive, the instance not held). Suspended, the
            # next request claims it again.
            if instance_id not in self.active:
                try:
                    self.store.fenced_set(instance_id, epoch, status="suspended")
                except Exception:  # noqa: BLE001 - the attach's own error is what the caller hears
                    log.warning("instance %s: failed attach not marked suspended", instance_id, exc_info=True)
            raise
        finally:
            gate = self.loading.pop(instance_id, None)
            if gate is not None:
                gate.release()
            if failed:  # a spawn its coordinator gave up on, an instance deleted meanwhile
                self._remove_stale_copy(instance_id)

    def _attach(self, instance_id: str, epoch: int, new_of: str | None, reply_to: str | None) -> dict[str, Any]:
        current = self.active.get(instance_id)
        if current is not None:
            if epoch in (current.epoch, current.epoch + 1):
                # Claimed again for this member with nobody in between: what we hold is current.
                self._set_epoch(current, epoch)
                answer(self.r, reply_to, {"restored": False})
                return {"restored": False}
            self._drop(current, "re-attached after another owner")  # someone else owned it meanwhile
        # A spawn's record was written an instant ago by the coordinator waiting for this answer.
        rec = new_record(instance_id, new_of, epoch) if new_of is not None else self.store.get(instance_id)
        if rec is None:
            raise NotHere(f"instance {instance_id} does not exist")
        if rec.epoch != epoch:
            raise StaleEpoch(f"instance {instance_id}: attach for epoch {epoch}, current is {rec.epoch}")
        definition = self.registry.get_or_reload(rec.definition_id)
        # On the hub, not in a thread: restoring reads Redis (backup, journal) through gevent sockets.
        hooks, backups, journal = self.hooks, self.backups, self.journal
        # Whose copy it is (regina/local_copies.py): written into a new file's image, and into an
        # existing copy only when it names another member.
        mine = {MEMBER_META: self.member_id} if self.settings.vfs_backend != "memory" else {}
        opened = activation.open_current(self.settings, hooks, backups, journal, rec, new_of is not None, mine)
        vfs: AnyVFS | JournalVFS = opened.vfs
        if self.journal is not None:
            vfs = JournalVFS(opened.vfs, epoch, opened.journal_seq)
            vfs.written_bytes = opened.replayed_bytes
        if self.hooks.prepare_instance is not None:
            self.hooks.prepare_instance(instance_id, definition)
        tools, runner, system_prompt = self._equipped(instance_id, vfs, definition, lambda: act.run_id)
        act = Active(
            instance_id=instance_id,
            definition=definition,
            epoch=epoch,
            vfs=vfs,
            session=Session(vfs),
            tools=tools,
            runner=runner,
            fence=Fence(self.r, instance_id, epoch),
            system_prompt=system_prompt,
            lock=self.loading.get(instance_id) or FifoLock(),  # the gate: see begin_attach
        )
        tools.open()  # MCP connections follow the activation (SPEC §12)
        self.active[instance_id] = act
        self._park(act)  # a VFS opened parked (sqlite) has nothing to close here
        result = {"restored": opened.restored}
        # Last, so the answer goes out when the instance is held here (a command that follows
        # it finds it in `active`); steps wait on the gate until this returns.
        if not self.writes.attached(instance_id, epoch, len(self.active), reply_to, result):
            self.active.pop(instance_id, None)
            act.runner.close()
            tools.close()
            vfs.close()
            raise StaleEpoch(f"instance {instance_id}: moved on while attaching at epoch {epoch}")
        return result

    def _equipped(
        self, instance_id: str, vfs: AnyVFS | JournalVFS, definition: AgentDefinition, run_id: Callable[[], str]
    ) -> tuple[InstanceTools, ToolRunner, str]:
        """An instance's tools (not opened yet), where its tool calls run, and its system prompt."""
        equip = self.equipment
        tools = equip.tools(instance_id, vfs, definition, run_id)
        journal = vfs if isinstance(vfs, JournalVFS) else None
        runner = equip.runner(
            instance_id,
            definition,
            tools,
            journal.record if journal else None,
            journal.mark_changing if journal else None,
            journal.must_checkpoint if journal else None,
        )
        return tools, runner, equip.system_prompt(definition)

    def _refresh_definition(self, act: Active) -> None:
        """A reload that changed the instance's agent reaches it at its next step (its prompt,
        model, tools, MCP servers, limits), not only once it is suspended or moved: two instances
        of one agent behaved differently after a reload. Called with the instance's turn held (no
        step runs); an agent whose file is gone keeps the definition it has."""
        try:
            current = self.registry.get(act.definition.name)
        except NotFound:
            return
        if current is act.definition:  # every step but the first after a reload: no comparison
            return
        if current.model_dump() == act.definition.model_dump():  # reloaded unchanged (tool sources too)
            act.definition = current
            return
        old_tools, old_runner = act.tools, act.runner
        try:
            act.tools, act.runner, act.system_prompt = self._equipped(
                act.instance_id, act.vfs, current, lambda: act.run_id
            )
            act.definition = current
            act.tools.open()
        finally:
            if act.runner is not old_runner:
                old_runner.close()
            if act.tools is not old_tools:
                old_tools.close()
        log.info("instance %s: agent %s reloaded (new definition from its next step)", act.instance_id, current.name)

    def _set_epoch(self, act: Active, epoch: int) -> None:
        act.epoch = epoch
        act.fence.epoch = epoch
        if isinstance(act.vfs, JournalVFS):
            act.vfs.epoch = epoch
        run = self.running.get(act.run_id)
        if run is not None:  # its events go on at the new epoch (they were refused as stale)
            run.publisher.epoch = epoch

    def cancel_tool(self, instance_id: str) -> None:
        """Make the instance's tool call in progress (if any) fail now (its process is stopped)."""
        act = self.active.get(instance_id)
        if act is not None:
            act.runner.cancel()

    def tool_pids(self) -> list[int]:
        """Pids of the tool processes alive on this worker (memory figures add them up)."""
        pids = [getattr(act.runner, "pid", None) for act in list(self.active.values())]
        return [p for p in pids if p is not None]

    # -- chat ------------------------------------------------------------------------------

    def run_step(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> None:
        """Run one chat step to its end, publishing its events; steps of one instance queue up.

        Raises StaleEpoch (after letting go of the instance) the moment a fenced write finds
        that the instance moved to another owner: no further tool, event or steering drain.
        """
        try:
            act = self._turn(instance_id)
        finally:
            self._had_turn(instance_id)
        pre = self._prebegun.pop(run_id, None)
        snap: Snapshot | None = None
        try:
            if self.active.get(instance_id) is not act:
                raise NotHere(f"instance {instance_id} was released from {self.member_id}")
            self._refresh_definition(act)
            try:
                self.steps.run(act, run_id, message, stream, pre[1] if pre and pre[0] == act.epoch else None)
            except StaleEpoch:
                self._drop(act, f"step {run_id} found its epoch stale")
                raise
            except Exception as exc:
                # Ended here, the instance's turn still held: the steering the run took goes back
                # before the instance's next step starts (and takes newer steering first), and from
                # the transcript this step wrote. Should this fail, the task reports it again.
                log.exception("step %s for %s failed", run_id, instance_id)
                self.end_failed(instance_id, run_id, step_error(exc))
                return
            if isinstance(act.vfs, JournalVFS) and act.vfs.written_bytes > self.settings.storage.checkpoint_bytes:
                snap = self._checkpoint_snapshot(act)
        finally:
            try:
                self._catch_up(act)
            finally:
                act.lock.release()
        if snap is not None:
            self._checkpoint_store(act, snap)  # the next step runs meanwhile

    @staticmethod
    def _catch_up(act: Active) -> bool:
        """Write the run's answer to the local file now that its end is in Redis (the loop left
        it for after: `JournalVFS.append_behind`); False when that failed: it is tried again
        before the file's next use (which fails meanwhile), and the journal holds it."""
        if isinstance(act.vfs, JournalVFS):
            try:
                act.vfs.settle()
            except Exception as exc:  # noqa: BLE001 - see above
                log.error("instance %s: its local copy could not take the run's last append: %r", act.instance_id, exc)
                return False
        return True

    def end_failed(self, instance_id: str, run_id: str, error: str) -> None:
        """End a run whose step failed with an `error` event, fenced by the epoch this member
        holds the instance under: an owner that turned stale ends nothing of the new owner's run
        (StaleEpoch), and a member the record does not name at all raises NotHere (the step goes
        back to the owner's queue). An instance whose record is gone ends its run unfenced.

        The run's usage is what it spent (`_failed_usage`): the finish script adds it to the
        instance's usage, once (a run ends once), so `maxTokensPerInstance` counts it. The events
        its step published and did not write (a sync chat's wait for the run's end) go before the
        error, so its followers see what the step did. The steering the run took (its steering
        journal) and never saved to its transcript goes back to the instance in that script
        (`_unsaved_steering`), for its next run: once, and only if this ends the run. What the
        failed step left here (`Active.failed`) is kept until the end is written: a second report
        of the end, after the first one failed, still has it."""
        act = self.active.get(instance_id)
        epoch = act.epoch if act is not None else None
        if epoch is None:
            rec = self.store.get(instance_id)
            if rec is not None:
                if rec.member != self.member_id:
                    raise NotHere(
                        f"instance {instance_id} is held by {rec.member or 'no member'}, not {self.member_id}"
                    )
                epoch = rec.epoch
        failed = act.failed if act is not None and act.failed is not None and act.failed.run_id == run_id else None
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(keys.run_record(run_id), "spent")
        pipe.lrange(keys.run_steered(run_id), 0, -1)
        spent, taken = cast(tuple[str | None, list[str]], pipe.execute())
        usage = _failed_usage(failed, spent)
        give_back = self._unsaved_steering(act, run_id, taken)
        publisher = RunPublisher(self.r, run_id, instance_id, self.settings.run_retention, epoch=epoch)
        if failed is not None:
            publisher.adopt(failed.unwritten())
        if act is not None and isinstance(act.vfs, JournalVFS):
            # Its transcript's last changes go with the end: what `_unsaved_steering` read as
            # saved is in Redis, not only in this worker's copy.
            publisher.journal = act.vfs
        publisher.publish({"type": "error", "error": error, "usage": usage.as_dict()}, give_back=give_back)
        if act is not None and act.failed is failed:
            act.failed = None
        if give_back:
            log.warning("run %s failed: %d steering message(s) it took go back to its instance", run_id, len(give_back))

    @staticmethod
    def _unsaved_steering(act: Active | None, run_id: str, taken: list[str]) -> list[str]:
        """The entries of a failed run's steering journal (`taken`) not saved to its transcript
        (`regina.step.not_saved`); all of them when the transcript is not at hand here."""
        if not taken:
            return []
        try:
            history = act.session.messages if act is not None else None
        except Exception:  # an unreadable transcript: none of them is known to be in it
            log.warning("run %s: its transcript is unreadable", run_id, exc_info=True)
            history = None
        if history is None:
            return taken
        return encode_all(not_saved(decode_all(taken), history, run_id))

    # -- the consumer's take of a step (workers/transport.py, `StepStarts`) -------------------

    #: Runs started by a take and never claimed by their step (a greenlet killed before it ran)
    #: are forgotten past this many; such a step, if it runs, starts its run again (no harm: a
    #: run already `running` is handed what its first start took, from its steering journal).
    PREBEGUN_LIMIT = 1000

    def prebegin(self, instance_id: str) -> tuple[int, int] | None:
        """(epoch, run retention) when a step of `instance_id` taken now may start its run in the
        take: the instance is attached here, no step of it runs or waits for its turn, and none
        was taken without having had its turn yet (steps start in arrival order: a later step
        must not start its run, and take the steering, before an earlier one)."""
        if instance_id in self.loading or self._taken.get(instance_id):
            return None
        act = self.active.get(instance_id)
        if act is None or act.lock.busy:
            return None
        return act.epoch, self.runs.retention

    def taken(self, instance_id: str, tag: str, begun: tuple[int, list[str]] | None) -> None:
        """A step of `instance_id` was taken from its queue (delivery tag = run id for a chat
        step), its run started with it when `begun` is given: (epoch, the begin script's reply)."""
        self._taken[instance_id] = self._taken.get(instance_id, 0) + 1
        if begun is not None:
            if len(self._prebegun) >= self.PREBEGUN_LIMIT:
                self._prebegun.clear()
            self._prebegun[tag] = (begun[0], parse_begun(begun[1]))

    def _had_turn(self, instance_id: str) -> None:
        left = self._taken.get(instance_id, 0) - 1
        if left > 0:
            self._taken[instance_id] = left
        else:
            self._taken.pop(instance_id, None)

    def _turn(self, instance_id: str) -> Active:
        """Wait for this step's turn (arrival order) and return the instance, its lock held."""
        gate = self.loading.get(instance_id)
        if gate is not None:
            gate.acquire()
            act = self.active.get(instance_id)
            if act is not None and act.lock is gate:
                return act  # a new Active: the gate is its lock, held now
            gate.release()  # the attach failed, or kept the Active (and lock) held here already
        act = self.active.get(instance_id)
        if act is None:
            raise NotHere(f"instance {instance_id} is not attached to {self.member_id}")
        act.lock.acquire()
        return act

    #: Seconds before a checkpoint that failed is tried again (doubling up to the cap): the
    #: journal holds every change meanwhile, and a storage outage is not hit after every run.
    CHECKPOINT_RETRY = (5.0, 300.0)

    def _checkpoint_snapshot(self, act: Active) -> Snapshot | None:
        """Start backing up a started instance whose journal grew past storage.checkpointBytes:
        flush and snapshot it (the caller holds its step lock); None when there is nothing to do
        now. A snapshot returned holds `act.backup_lock` until `_checkpoint_store` stores it."""
        backups = self.backups
        if backups is None or time.monotonic() < act.checkpoint_after or act.backup_lock.busy:
            return None  # a checkpoint still being stored, or one that failed a moment ago
        act.backup_lock.acquire()
        try:
            self.steps.flush(act)  # the snapshot covers every entry up to here
            rec = self.store.get(act.instance_id)
            if rec is None or rec.epoch != act.epoch:
                raise StaleEpoch(f"instance {act.instance_id}: not backing up from a stale owner")
            return backups.snapshot_vfs(
                act.instance_id, act.epoch, rec.backup_version + 1, act.vfs, self._snapshotter(act)
            )
        except StaleEpoch:
            act.backup_lock.release()
            self._drop(act, "checkpoint found its epoch stale")
        except Exception:  # noqa: BLE001 - the journal still holds every change; tried again later
            act.backup_lock.release()
            self._checkpoint_failed(act, "its snapshot")
        return None

    def _checkpoint_store(self, act: Active, snap: Snapshot) -> None:
        """Put a checkpoint's snapshot to storage and commit it, outside the step lock: the next
        step does not wait for storage. Fencing holds as for any backup: the commit is refused
        (and the blob deleted) if the epoch moved on, and it trims only the journal entries up to
        the snapshot's seq, so entries a step appends meanwhile stay for the next backup. The
        local file was marked clean for this snapshot, and the first change after it marked it
        dirty again (regina/vfs/recording.py): a failed store leaves a file whose meta names a
        key the record does not (or the committed one, unchanged since): never a wrong copy."""
        assert self.backups is not None  # a snapshot was taken
        started = time.monotonic()
        try:
            size = self.backups.store(snap)
        except StaleEpoch:
            # A step running now finds it stale and drops it itself (as `release` leaves it).
            if self.active.get(act.instance_id) is act and not act.lock.busy:
                self._drop(act, "checkpoint found its epoch stale")
        except Exception:  # noqa: BLE001 - the journal still holds every change; tried again later
            if isinstance(act.vfs, JournalVFS):
                act.vfs.written_bytes += snap.written
            self._checkpoint_failed(act, "storing it")
        else:
            act.checkpoint_after = act.checkpoint_retry = 0.0
            metrics.BACKUPS.inc()
            metrics.BACKUP_SECONDS.observe(time.monotonic() - started)
            metrics.BACKUP_BYTES.observe(size)
        finally:
            act.backup_lock.release()

    def _checkpoint_failed(self, act: Active, what: str) -> None:
        first, cap = self.CHECKPOINT_RETRY
        act.checkpoint_retry = min(cap, act.checkpoint_retry * 2) if act.checkpoint_retry else first
        act.checkpoint_after = time.monotonic() + act.checkpoint_retry
        log.warning(
            "instance %s: checkpoint failed (%s); tried again in %gs",
            act.instance_id,
            what,
            act.checkpoint_retry,
            exc_info=True,
        )

    def cancel_local(self, run_id: str) -> bool:
        """Cancel a run if it runs here (the cancel listener calls this); True if it did."""
        ctx = self.running.get(run_id)
        if ctx is None:
            pre = self._prebegun.get(run_id)
            if pre is None:
                self._remember_cancel(run_id)
                return False
            # Started by its take, its step not yet running (waiting for a slot in the pool): the
            # cancel flag the take read is out of date; the step starts cancelled.
            self._prebegun[run_id] = (pre[0], dataclasses.replace(pre[1], cancel_requested=True))
            return True
        ctx.cancel.cancel(CANCELLED)
        return True

    def _remember_cancel(self, run_id: str) -> None:
        """Keep an announced cancel for a run that may be starting here: its begin (which read
        the cancel flag) is done, but its step has not registered the run yet. Every worker
        hears every cancel, so this holds at most PREBEGUN_LIMIT, the oldest minute dropped
        first (a run that ends without registering here leaves its id behind)."""
        early = self.steps.cancelled_early
        if len(early) >= self.PREBEGUN_LIMIT:
            cutoff = time.monotonic() - 60
            for old in [rid for rid, at in early.items() if at < cutoff]:
                del early[old]
            if len(early) >= self.PREBEGUN_LIMIT:
                early.clear()
        early[run_id] = time.monotonic()

    @classmethod
    def _park(cls, act: Active) -> None:
        """Release the VFS's SQLite connection and cache, and the session's parsed history with
        its model form and JSON, until the next use: an idle instance's memory no longer grows
        with its conversation (the next step reads the file again). Not while the file lacks an
        answer it could not take (`_catch_up`): the parsed history is then the one that has it."""
        if not cls._catch_up(act):
            return
        park = getattr(act.vfs, "park", None)
        if park is not None:
            park()
            act.session.invalidate()
            act.parked = True

    def park_idle(self, older_than: float) -> int:
        """Park the VFS of instances that ran nothing for `older_than` seconds; returns how many."""
        now = time.monotonic()
        count = 0
        for act in list(self.active.values()):
            if not act.parked and not act.lock.busy and now - act.last_used > older_than:
                with act.lock:
                    self._park(act)
                count += 1
        return count

    def report_sizes(self) -> int:
        """Record the VFS size of the instances that ran a step since the last report (the
        fleet view's `vfsBytes`; a backup records its own), fenced like every owner's write:
        one round trip for all of them, none when nothing changed. Returns how many changed."""
        since, self._sizes_at = self._sizes_at, time.monotonic()
        changed: list[tuple[Active, int]] = []
        for act in list(self.active.values()):
            if act.last_used < since:
                continue
            size = live_bytes(act.vfs)
            if size is not None and size != act.reported_bytes:
                changed.append((act, size))
        if not changed:
            return 0
        done = self.store.fenced_set_many([(a.instance_id, a.epoch, {"vfsBytes": n}) for a, n in changed])
        for (act, size), ok in zip(changed, done, strict=True):
            if ok:
                act.reported_bytes = size
        return len(changed)

    def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation as stored in the instance's session file.

        Reading it reopens a parked instance's SQLite connection and loads its history: parked
        again at once (a read is not a use), else an idle instance kept that memory until its
        next step, since `park_idle` skips instances flagged parked."""
        act = self.active.get(instance_id)
        if act is None:
            return self._stored_messages(instance_id)
        act.session.invalidate()
        messages = [dict(m) for m in act.session.load()]
        if act.parked:
            if act.lock.busy:
                act.parked = False  # a suspend or backup holds it: the next idle sweep parks it
            else:
                with act.lock:
                    self._park(act)
        return messages

    def _stored_messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation of an instance suspended here, read from its local VFS (not attached)."""
        stored = activation.local_messages(self.settings, instance_id)
        if stored is None:
            raise NotHere(f"instance {instance_id} has no copy on {self.member_id}")
        return stored

    # -- release ---------------------------------------------------------------------------

    def is_busy(self, instance_id: str) -> bool:
        """True while a step runs or waits on the instance."""
        act = self.active.get(instance_id)
        return act is not None and act.lock.busy

    @metrics.timed(metrics.SUSPENDS, metrics.SUSPEND_SECONDS)
    def suspend(self, instance_id: str, epoch: int | None = None) -> dict[str, Any]:
        """Wait for running steps, back up the VFS, close it, mark the instance suspended."""
        act = self.active.get(instance_id)
        gate = self.loading.get(instance_id) if act is None else None
        if gate is not None:
            # An attach is under way: suspend what it attaches, after the steps queued on it. Marked
            # suspended now, the attach's last write would make it started again on a member that
            # no longer reads its queue (its steps waited until requestTimeout).
            with gate:
                pass
            act = self.active.get(instance_id)
        if act is None:
            rec = self.store.get(instance_id)
            if rec is not None and rec.status != "suspended" and (epoch is None or rec.epoch == epoch):
                self.store.fenced_set(instance_id, rec.epoch, status="suspended")
            return {"backedUp": False}
        if not self.store.fenced_set(instance_id, act.epoch, status="suspending"):
            self._drop(act, "suspend found its epoch stale")
            return {"backedUp": False, "moved": True}
        with act.lock:
            if self.active.get(instance_id) is not act:
                return {"backedUp": False, "moved": True}  # a step found the epoch stale meanwhile
            try:
                with act.backup_lock:  # after a checkpoint still being stored
                    size, version = self._backup(act)
            except StaleEpoch:
                self._drop(act, "its backup found the epoch stale")
                return {"backedUp": False, "moved": True}
            except Exception:
                # Storage or Redis failed: the instance stays here, started again (its queue is
                # read again by the caller; the idle loop asks for the suspend again later).
                log.warning("instance %s: suspend failed; it stays started here", instance_id, exc_info=True)
                self._unsuspend(act)
                raise
            act.runner.close()
            held = self.active.get(instance_id) is act  # a delete meanwhile took it (and counted it)
            if held:
                self.active.pop(instance_id, None)
            act.tools.close()
            act.vfs.close()
            fields: dict[str, str | int | float] = {"status": "suspended"}
            if version:
                fields["vfsBytes"] = size
            try:
                if held and not self._mark_suspended(instance_id, act.epoch, fields):
                    log.warning("instance %s moved on while suspending; its newer owner's state is kept", instance_id)
            finally:
                if held:
                    self._count(-1)
        return {"backedUp": bool(version), "bytes": size}

    #: Pauses between the tries of a suspend's last write (`status: suspended`), about 9 s in
    #: all: a Redis restart or fail-over usually fits. Left `suspending`, the record would name
    #: a live member that no longer holds the instance (a resume then asks it to suspend again:
    #: regina/lifecycle.py).
    SUSPENDED_WRITE_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.5, 2.0, 2.0, 2.0)

    def _mark_suspended(self, instance_id: str, epoch: int, fields: dict[str, str | int | float]) -> bool:
        """The suspend's fenced last write, tried again while Redis fails (the backup is stored)."""
        for pause in (*self.SUSPENDED_WRITE_PAUSES, None):
            try:
                return self.store.fenced_set(instance_id, epoch, **fields)
            except redis.RedisError:
                if pause is None:
                    raise
                log.warning("instance %s: marking it suspended failed; trying again", instance_id, exc_info=True)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _unsuspend(self, act: Active) -> None:
        """Undo a suspend's `suspending` (a coordinator waits on it, then would give up with 503s
        for as long as it stayed)."""
        try:
            self.store.fenced_set(act.instance_id, act.epoch, status="started")
        except Exception:  # noqa: BLE001 - Redis down too: the record is repaired by the next suspend
            log.warning("instance %s: could not mark it started again", act.instance_id, exc_info=True)

    @metrics.timed(metrics.BACKUPS, metrics.BACKUP_SECONDS)
    def _backup(self, act: Active) -> tuple[int, int]:
        """Snapshot the VFS and put it to storage under a new version; (size, version or 0).

        Fenced (regina/backups.py): StaleEpoch when another owner took the instance.
        """
        if self.backups is None:
            return 0, 0
        if isinstance(act.vfs, JournalVFS):
            self.steps.flush(act)  # the backup covers every entry up to here
        rec = self.store.get(act.instance_id)
        if rec is None or rec.epoch != act.epoch:
            raise StaleEpoch(f"instance {act.instance_id}: not backing up from a stale owner")
        custom = self._snapshotter(act)
        size, version = self.backups.save_vfs(act.instance_id, act.epoch, rec.backup_version + 1, act.vfs, custom)
        metrics.BACKUP_BYTES.observe(size)
        return size, version

    def _snapshotter(self, act: Active) -> Callable[[], bytes]:
        """What takes this instance's backup bytes (the factory's `backup` hook if it has one,
        else its VFS's snapshot), run in a thread of the snapshot pool: on the hub, SQLite's copy
        of a large file (0.2 s per 100 MiB), a large memory VFS, a walk of a large realdir tree or
        a hook's own work would stop every greenlet of the worker; in a thread they leave it the
        GIL wherever they wait on the disk or SQLite. Not the tools' pool, which abandoned tools
        may fill for good; bounded by SNAPSHOT_TIMEOUT (the backup then fails and the journal
        keeps every change). A memory or realdir snapshot takes its VFS's lock, which tools'
        threads take as well: held across threads like theirs."""
        hook = self.hooks.backup
        base = act.vfs
        if isinstance(base, JournalVFS):
            base.settle()  # the backup holds every change the journal has up to here
            base = base.inner
        take: Callable[[], bytes] = base.snapshot if hook is None else partial(hook, act.instance_id, self.settings)
        return lambda: snapshot_pool().submit(take).result(timeout=SNAPSHOT_TIMEOUT)

    def _drop(self, act: Active, why: str) -> None:
        """Let go of an instance another owner holds now: close it here, write nothing shared."""
        if self.active.get(act.instance_id) is act:
            self.active.pop(act.instance_id, None)
            self._count(-1)
            log.warning("instance %s (epoch %d) dropped from %s: %s", act.instance_id, act.epoch, self.member_id, why)
        act.runner.cancel()
        act.runner.close()
        act.tools.close()
        act.vfs.close()
        self._remove_stale_copy(act.instance_id)

    def _remove_stale_copy(self, instance_id: str) -> None:
        """Remove the local copy of an instance let go of here that nobody may use: deleted
        (while attaching or attached here, a spawn its coordinator gave up on: the DELETE's own
        removal may have run before the copy was written, and a deleted instance's files must not
        stay on a disk), or owned by another member now (its state is that member's plus storage;
        kept, the old conversation stayed on this disk for as long as the worker ran). A copy of
        an instance this member owns stays: a resume here uses it (regina/local_copies.py)."""
        if self._holds(instance_id):
            return  # attached (again) meanwhile, or an attach under way decides
        try:
            member = self.r.hget(keys.instance_record(instance_id), "member")
            owner = None if member is None else str(member)
            if not self._holds(instance_id) and local_copies.remove_if_stale(
                self.settings, self.member_id, instance_id, owner
            ):
                why = "deleted" if owner is None else f"{owner} owns it now"
                log.info("instance %s: %s; its local copy on %s removed", instance_id, why, self.member_id)
        except Exception:  # noqa: BLE001 - the next rejoin or restart of the worker removes it; logged
            log.warning("instance %s: stale local copy not removed", instance_id, exc_info=True)

    def _holds(self, instance_id: str) -> bool:
        """Attached here, or an attach under way."""
        return instance_id in self.active or instance_id in self.loading

    def remove_stale_copies(self) -> int:
        """The start-up removal of local copies nobody may use, on a running member (back after
        being taken for dead: instances moved or were deleted meanwhile); instances attached or
        being attached are left to `release` and `attach`. How many went."""
        return local_copies.remove_stale_copies(self.r, self.settings, self.member_id, self._holds)

    def release(self, instance_id: str, epoch: int | None = None) -> dict[str, Any]:
        """Drop an instance whose epoch moved on (never waits: called from the consumer loop)."""
        act = self.active.get(instance_id)
        if act is None or (epoch is not None and act.epoch > epoch) or act.lock.busy or act.fence.current():
            return {"released": False}  # gone, re-attached, or a running step that drops it itself
        self._drop(act, "released: another owner holds it")
        return {"released": True}

    def stale_instances(self) -> list[tuple[str, int]]:
        """(instance, epoch) of attached instances whose record moved to another epoch (or is gone)."""
        return stale_epochs(self.r, {iid: act.epoch for iid, act in list(self.active.items())})

    def delete(self, instance_id: str) -> dict[str, Any]:
        """Drop the instance from this member and remove its local VFS file.

        An attach under way (restoring the VFS) is waited for first, as `suspend` does: removed
        before the restore wrote it, the deleted instance's file would stay on this disk."""
        gate = self.loading.get(instance_id)
        if gate is not None:
            with gate:
                pass
        act = self.active.pop(instance_id, None)
        if act is not None:
            act.runner.cancel()
            with act.lock:
                act.runner.close()
                act.tools.close()
                act.vfs.close()
            self._count(-1)
        activation.remove_local(self.settings, instance_id)
        return {}

    def _count(self, delta: int) -> None:
        """Change this member's instance counter by `delta` (regina/member_writes.py)."""
        self.writes.count(delta, len(self.active))

    def idle_instances(self, now: float | None = None) -> list[str]:
        """Attached instances idle longer than idleTimeout and not running a step."""
        timeout = self.settings.idle_timeout
        if timeout <= 0 or not self.active:
            return []
        now = self.store.now() if now is None else now
        last = self.store.last_active_many(list(self.active))
        return [iid for iid, ts in last.items() if now - ts > timeout and not self.is_busy(iid)]

    def suspend_all(self) -> None:
        """Back up and release every instance (graceful shutdown)."""
        for iid in list(self.active):
            try:
                self.suspend(iid)
            except Exception:
                log.exception("instance %s: suspend at shutdown failed", iid)
