"""The worker side of an instance: open its VFS, run its chat steps in order, back it up.

`InstanceHost` holds the instances a member owns. It knows nothing of Celery: `workers/`
calls `attach`, `run_step`, `suspend`, `delete` and `messages` from greenlets, and only after
it changed which queues it consumes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from regina import activation, keys, metrics
from regina.backups import Backups
from regina.config import Settings
from regina.definitions import AgentDefinition
from regina.delegation import Delegation
from regina.durable_run import DurableRun
from regina.equipment import Equipment
from regina.errors import ReginaError, StaleEpoch
from regina.factory_hooks import FactoryHooks
from regina.fencing import Fence, stale_epochs
from regina.fifo_lock import FifoLock
from regina.instances import InstanceStore
from regina.journal import Journal, JournalVFS
from regina.outbound import Allowlist
from regina.providers import resolve_model_target
from regina.registry import AgentRegistry
from regina.run_watch import RunWatch
from regina.runs.context import InterrupterFactory, RunContext, budget_for
from regina.runs.steering import encode
from regina.runs.store import RunStore
from regina.runs.stream import RunPublisher
from regina.runtime.events import ToolDegraded
from regina.runtime.loop import TurnSpec, run_turn
from regina.runtime.session import Session
from regina.runtime.sink import CANCELLED, Steer
from regina.runtime.tools.merge import InstanceTools
from regina.runtime.tools.process import warm_up
from regina.runtime.tools.runner import ToolRunner
from regina.sandbox_env import sandbox_env
from regina.storage import Storage

log = logging.getLogger("regina.host")

AnyVFS = activation.AnyVFS


class NotHere(ReginaError):
    """Raised when a step arrives for an instance this member does not hold (anymore)."""


@dataclass
class Active:
    """An instance attached to this member."""

    instance_id: str
    definition: AgentDefinition
    epoch: int
    vfs: AnyVFS | JournalVFS
    session: Session
    tools: InstanceTools
    runner: ToolRunner
    fence: Fence
    system_prompt: str = ""
    lock: FifoLock = field(default_factory=FifoLock)
    last_used: float = field(default_factory=time.monotonic)
    parked: bool = False
    last_touch: float = 0.0
    #: The running run and its deadline (monotonic), for the `delegate` tool.
    run_id: str = ""
    run_deadline: float = 0.0


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
        self.active: dict[str, Active] = {}
        # Instances being attached: steps that arrive meanwhile wait on this gate.
        self.loading: dict[str, FifoLock] = {}
        self.env = sandbox_env(settings.allowed_env)
        self.equipment = Equipment(settings, self.env, Allowlist.parse(settings.outbound_allowlist), delegation)
        if settings.use_processes or any(d.use_processes for d in registry.list()):
            warm_up()  # the fork server imports the tool code once, off the event loop
        os.makedirs(settings.vfs_dir, exist_ok=True)

    # -- activation ----------------------------------------------------------------------

    def begin_attach(self, instance_id: str) -> None:
        """Close the gate for an instance about to be attached (call before consuming its queue)."""
        if instance_id not in self.loading:
            gate = FifoLock()
            gate.acquire()
            self.loading[instance_id] = gate

    @metrics.timed(metrics.RESUMES, metrics.RESUME_SECONDS)
    def attach(self, instance_id: str, epoch: int) -> dict[str, Any]:
        """Open the instance here at `epoch`, restoring its VFS from storage when ours is older."""
        try:
            return self._attach(instance_id, epoch)
        finally:
            gate = self.loading.pop(instance_id, None)
            if gate is not None:
                gate.release()

    def _attach(self, instance_id: str, epoch: int) -> dict[str, Any]:
        current = self.active.get(instance_id)
        if current is not None:
            if epoch in (current.epoch, current.epoch + 1):
                # Claimed again for this member with nobody in between: what we hold is current.
                self._set_epoch(current, epoch)
                return {"restored": False}
            self._drop(current, "re-attached after another owner")  # someone else owned it meanwhile
        rec = self.store.get(instance_id)
        if rec is None:
            raise NotHere(f"instance {instance_id} does not exist")
        if rec.epoch != epoch:
            raise StaleEpoch(f"instance {instance_id}: attach for epoch {epoch}, current is {rec.epoch}")
        definition = self.registry.get_or_reload(rec.definition_id)
        # On the hub, not in a thread: restoring reads Redis (backup, journal) through gevent sockets.
        opened = activation.open_current(self.settings, self.hooks, self.backups, self.journal, rec)
        vfs: AnyVFS | JournalVFS = opened.vfs
        if self.journal is not None:
            vfs = JournalVFS(opened.vfs, epoch, opened.journal_seq)
            vfs.written_bytes = opened.replayed_bytes
        if self.hooks.prepare_instance is not None:
            self.hooks.prepare_instance(instance_id, definition)
        equip = self.equipment
        tools = equip.tools(instance_id, vfs, definition, lambda: (act.run_id, act.run_deadline))
        act = Active(
            instance_id=instance_id,
            definition=definition,
            epoch=epoch,
            vfs=vfs,
            session=Session(vfs),
            tools=tools,
            runner=equip.runner(instance_id, definition, tools),
            fence=Fence(self.r, instance_id, epoch),
            system_prompt=equip.system_prompt(definition),
        )
        if not self.store.fenced_set(instance_id, epoch, status="started", lastActive=self.store.now()):
            act.runner.close()
            vfs.close()
            raise StaleEpoch(f"instance {instance_id}: moved on while attaching at epoch {epoch}")
        tools.open()  # MCP connections follow the activation (SPEC §12)
        self.active[instance_id] = act
        self._park(act)
        self.store.fenced_set(instance_id, epoch, status="started", lastActive=self.store.now())
        self._count(+1)
        return {"restored": opened.restored}

    @staticmethod
    def _set_epoch(act: Active, epoch: int) -> None:
        act.epoch = epoch
        act.fence.epoch = epoch
        if isinstance(act.vfs, JournalVFS):
            act.vfs.epoch = epoch

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
        gate = self.loading.get(instance_id)
        if gate is not None:
            with gate:
                pass
        act = self.active.get(instance_id)
        if act is None:
            raise NotHere(f"instance {instance_id} is not attached to {self.member_id}")
        with act.lock:
            if self.active.get(instance_id) is not act:
                raise NotHere(f"instance {instance_id} was released from {self.member_id}")
            try:
                self._run_locked(act, run_id, message, stream)
            except StaleEpoch:
                self._drop(act, f"step {run_id} found its epoch stale")
                raise
            if isinstance(act.vfs, JournalVFS) and act.vfs.written_bytes > self.settings.storage.checkpoint_bytes:
                self._checkpoint(act)

    def _run_locked(self, act: Active, run_id: str, message: str | None, stream: bool) -> None:
        instance_id = act.instance_id
        act.parked = False
        act.last_used = time.monotonic()
        # One round trip: our epoch still current? events already published? mark running,
        # and take the steering messages that wait for this run.
        # Resolved before steering is taken for the run: a failure here loses no message.
        target = resolve_model_target(act.definition.model, act.definition.provider, self.settings)
        begun = self.runs.begin(instance_id, run_id, act.epoch)
        if begun.kind == "stale":
            raise StaleEpoch(f"instance {instance_id} moved to another member")
        if begun.kind == "ended":
            # A redelivered step whose run already ended (its ack was lost), a queued run
            # cancelled before it started, or a run whose record expired: never run it twice.
            log.info("step for run %s dropped: run %s", run_id, begun.previous_status or "unknown or expired")
            return
        window = self.settings.stream_batch_ms / 1000 if stream else None  # deltas batched
        publisher = RunPublisher(
            self.r, run_id, instance_id, self.settings.run_retention, begun.seq, not stream, window, act.epoch
        )
        # Only a redelivered step (its run already marked running) can have its message saved.
        if begun.previous_status == "running" and any(m.get("runId") == run_id for m in act.session.messages):
            message = None  # redelivered after a crash: the message is already in the history
            answer = activation.answer_of(act.session.messages, run_id)
            if answer is not None:  # ... and its answer too: finish with it, do not ask again
                self._flush(act)
                self._give_back(instance_id, begun.steered)
                publisher.publish({"type": "finish", "finishReason": "stop", "text": answer, "usage": activation.ZERO})
                return
        d = act.definition
        budget = budget_for(d.budget_settings(self.settings), begun.instance_tokens)
        try:
            steered = _not_saved(begun.earlier, act.session.messages, run_id) + begun.steered
        except BaseException:  # e.g. an unreadable transcript: the steers taken are not lost
            self._give_back(instance_id, begun.steered)
            raise
        ctx = DurableRun(self.r, instance_id, run_id, publisher, budget, steered, self.interrupter_factory)
        # The open touched the instance and the start read the cancel flag just now: the first
        # heartbeat is due a second from here.
        act.last_touch = time.monotonic()
        ctx.touch_gate = lambda: self._touch_due(act)
        ctx.bind(act.fence, lambda before_tool: self._flush(act, before_tool))
        if begun.cancel_requested:
            ctx.cancel.cancel(CANCELLED)
        # The delegate tool reads the run from `act`; a dropped MCP server is this run's event.
        act.run_id, act.run_deadline = run_id, time.monotonic() + self.settings.limits.request_timeout
        act.tools.bind_run(lambda server, error: ctx.emit(ToolDegraded(server=server, error=error)))
        spec = TurnSpec(
            target=target,
            system_prompt=act.system_prompt,
            tools=act.tools.for_step(),
            tools_for_step=act.tools.for_step,
            max_steps=d.max_steps or self.settings.defaults.max_steps,
            temperature=d.temperature,
            compaction=d.compaction_settings(self.settings),
            tool_output_limit=self.settings.limits.max_tool_output_chars,
            stream=stream,
            runner=act.runner,
        )
        watch = ctx.watch = RunWatch(instance_id, run_id, spec.target.provider, d.model, stream)
        self.running[run_id] = ctx
        ctx.start_clock()
        try:
            watch.result = run_turn(spec, act.session, message, ctx)
        except BaseException:
            self._give_back(instance_id, ctx.unclaimed_steering())
            raise
        finally:
            ctx.stop_clock()
            watch.done()
            self.running.pop(run_id, None)
        if publisher.ended:  # its finish script reset the idle timer
            act.last_touch = time.monotonic()
        else:
            self._touch(act)
        act.last_used = time.monotonic()

    def _flush(self, act: Active, before_tool: bool = False) -> None:
        """Ship the journal (with nothing pending, a fence check). Without storage there is no
        journal: only a tool call checks the fence first (terminal events are fenced anyway)."""
        if self.journal is not None and isinstance(act.vfs, JournalVFS):
            self.journal.flush(act.instance_id, act.epoch, act.vfs)
        elif before_tool and not act.fence.current():
            raise act.fence.stale("tool call")

    def _checkpoint(self, act: Active) -> None:
        """Back up a started instance whose journal grew past storage.checkpointBytes."""
        try:
            self._backup(act)
        except StaleEpoch:
            self._drop(act, "checkpoint found its epoch stale")
        except Exception:  # noqa: BLE001 - the journal still holds every change; retried next run
            log.warning("instance %s: checkpoint failed", act.instance_id, exc_info=True)

    def _give_back(self, instance_id: str, steered: list[Steer]) -> None:
        """Put steering a failed step took but never used back at the head of the instance's list."""
        if steered:
            self.r.lpush(keys.steering(instance_id), *[encode(s) for s in reversed(steered)])
            log.warning("instance %s: %d steering message(s) given back after a failed step", instance_id, len(steered))

    def cancel_local(self, run_id: str) -> bool:
        """Cancel a run if it runs here (the cancel listener calls this); True if it did."""
        ctx = self.running.get(run_id)
        if ctx is None:
            return False
        ctx.cancel.cancel(CANCELLED)
        return True

    def _touch(self, act: Active) -> None:
        """Reset the idle timer from a running loop, at most once a second (timers are in seconds)."""
        if self._touch_due(act):
            act.fence.set(lastActive=time.time())

    @staticmethod
    def _touch_due(act: Active) -> bool:
        now = time.monotonic()
        if now - act.last_touch < 1.0:
            return False
        act.last_touch = now
        return True

    @staticmethod
    def _park(act: Active) -> None:
        """Release the VFS's SQLite connection and cache until the next use."""
        park = getattr(act.vfs, "park", None)
        if park is not None:
            park()
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

    def messages(self, instance_id: str) -> list[dict[str, Any]]:
        """The conversation as stored in the instance's session file."""
        act = self.active.get(instance_id)
        if act is None:
            return self._stored_messages(instance_id)
        act.session.invalidate()
        return [dict(m) for m in act.session.load()]

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
                size, version = self._backup(act)
            except StaleEpoch:
                self._drop(act, "its backup found the epoch stale")
                return {"backedUp": False, "moved": True}
            act.runner.close()
            self.active.pop(instance_id, None)
            act.tools.close()
            act.vfs.close()
            fields: dict[str, str | int | float] = {"status": "suspended"}
            if version:
                fields["vfsBytes"] = size
            if not self.store.fenced_set(instance_id, act.epoch, **fields):
                log.warning("instance %s moved on while suspending; its newer owner's state is kept", instance_id)
        self._count(-1)
        return {"backedUp": bool(version), "bytes": size}

    @metrics.timed(metrics.BACKUPS, metrics.BACKUP_SECONDS)
    def _backup(self, act: Active) -> tuple[int, int]:
        """Snapshot the VFS and put it to storage under a new version; (size, version or 0).

        Fenced (regina/backups.py): StaleEpoch when another owner took the instance.
        """
        if self.backups is None:
            return 0, 0
        if isinstance(act.vfs, JournalVFS):
            self._flush(act)  # the backup covers every entry up to here
        rec = self.store.get(act.instance_id)
        if rec is None or rec.epoch != act.epoch:
            raise StaleEpoch(f"instance {act.instance_id}: not backing up from a stale owner")
        hook = self.hooks.backup
        custom = (lambda: hook(act.instance_id, self.settings)) if hook is not None else None
        size, version = self.backups.save_vfs(act.instance_id, act.epoch, rec.backup_version + 1, act.vfs, custom)
        metrics.BACKUP_BYTES.observe(size)
        return size, version

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
        """Drop the instance from this member and remove its local VFS file."""
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
        """Change this member's instance counter, keeping its TTL (an INCR on a key that expired
        between two renewals would otherwise create it without one)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.incrby(keys.member_instances(self.member_id), delta)
        pipe.pexpire(keys.member_instances(self.member_id), max(1, int(self.settings.member_ttl * 1000)))
        pipe.execute()

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


def _not_saved(earlier: list[Steer], history: list[dict[str, Any]], run_id: str) -> list[Steer]:
    """Steering a crashed attempt of this run took but did not save to the history."""
    saved = [m.get("content") for m in history if m.get("role") == "user" and m.get("runId") == run_id]
    out = []
    for steer in earlier:
        if steer.message in saved:
            saved.remove(steer.message)
        else:
            out.append(steer)
    return out
