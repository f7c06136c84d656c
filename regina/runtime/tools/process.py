"""`useProcesses`: an instance's tools run in a child process of its own (docs/isolation.md).

One child per instance, started on the instance's first tool call and reused for the next ones,
stopped when the instance is suspended, deleted or the worker shuts down. Children come from
multiprocessing's *fork server*, never from a fork of the worker: forking a process with a
gevent hub, Redis connections and threads copies all of them in an unknown state. The fork
server is a clean interpreter with `regina.runtime.tools.child` preloaded, so a child costs a
fork (milliseconds) and shares the imported code with its siblings.

Waiting for an answer is a `select` on the pipe and the child's sentinel: cooperative under
gevent, and it tells an answer, a death (crash, `os._exit`, SIGKILL by the OOM killer, SIGXCPU
past `limits.toolCpuSeconds`) and a timeout apart. A dead or stopped child fails that one call
with a clear tool error; the next call starts a fresh child.

When the worker journals the instance (regina/journal.py), the child reports each VFS change as it
makes it (`("journal", change)` on the pipe, before the answer) and `on_change` journals it in the
worker: a tool's writes are as durable as the worker's own. A call cut short still reports what it
changed before: the pipe is read to its end before a dead or killed child is reaped. A call whose
reported changes would hold more than `CALL_CHANGES_FILES` × `limits.maxFileBytes` in the worker
is stopped the same way.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from regina import logs
from regina.config import Limits
from regina.errors import ToolError
from regina.pids import pid_runs
from regina.runtime.tools.base import Tool
from regina.runtime.tools.child import PRELOAD, ChildSpec, child_main
from regina.runtime.tools.runner import ToolRunner, thread_pool, timeout_message
from regina.secrets import secret_digests

__all__ = ["ProcessRunner", "mp_context", "resident_bytes", "warm_up"]

log = logging.getLogger(__name__)

_START_TIMEOUT = 30.0
#: The file changes one call reports may take at most this many times `limits.maxFileBytes` in the
#: worker (their journal entries, as `on_change` counts them): 1 GiB with the default 64 MiB, what
#: thread mode lets one bash call grow the worker (`MAX_CALL_GROWTH_KB`). The worker holds every
#: change reported until the step's journal flush: a bash loop rewriting a 38 MB file held 1.5 GiB
#: in the worker during one call.
CALL_CHANGES_FILES = 16
_ctx: Any = None
_ctx_lock = threading.Lock()
#: One child start at a time in a process. Under gevent each start runs multiprocessing's fork
#: server client in a real thread, and its module locks are gevent's, which do not order real
#: threads reliably: with several instances starting children at once, starts were seen waiting
#: for ever for the fork server's answer (read_signed), their steps with them.
_start_lock = threading.Lock()


def mp_context() -> Any:
    """The fork-server multiprocessing context (its server is started on first use)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(list(PRELOAD))
            _ctx = ctx
        return _ctx


def warm_up() -> None:
    """Start the fork server now, in a real thread (the worker calls this when it starts)."""

    def start() -> None:
        from multiprocessing import forkserver

        mp_context()
        forkserver.ensure_running()

    def start_alone() -> None:
        with _start_lock:
            try:
                thread_pool().submit(start).result(timeout=_START_TIMEOUT)
            except Exception:  # the first child start tries again and reports its own error
                log.warning("the tool fork server did not start", exc_info=True)

    threading.Thread(target=start_alone, daemon=True).start()  # a greenlet under gevent


def resident_bytes(pids: list[int]) -> int:
    """Summed resident memory of `pids` (Linux /proc; a pid that is gone counts 0)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def _wait(fds: list[int], timeout: float | None) -> list[int]:
    """The readable ones of `fds` (cooperative: gevent patches `select.select`)."""
    readable, _, _ = select.select(fds, [], [], timeout)
    return list(readable)


def _kill(proc: Any) -> None:
    """SIGKILL the child and its process group: every process its tools started (the child leads
    a session of its own, `child._lead_own_group`), so none outlives a timeout, cancel or close.

    The group is killed even when the child is already dead (crashed, `os._exit`, killed by the
    kernel): what it started may still run, and Linux keeps the group's id in use while it has a
    member. Unless that pid runs again: then the group was empty and the pid reused, perhaps by
    another instance's tool process (each leads a group), which must be spared."""
    try:
        pid = proc.pid
    except ValueError:  # closed: stopped and reaped already (a cancel racing a stop)
        return
    alive = proc.exitcode is None
    # A dead child's pid names its group only while a process of that group lives; if the pid
    # runs again, it was reused (maybe by another instance's tool process, a group leader too).
    if alive or not pid_runs(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # no such group (empty, or before setsid)
            pass
    if alive:
        proc.kill()


def _change_bytes(change: list[Any]) -> int:
    """About what one reported change weighs when `on_change` does not say what it keeps."""
    return sum(len(part) if isinstance(part, str | bytes) else 8 for part in change)


def _death(name: str, exitcode: int | None, spec: ChildSpec, cpu_seconds: float | None) -> str:
    if exitcode == -signal.SIGXCPU:
        why = f"used more than its CPU limit (limits.toolCpuSeconds = {cpu_seconds:g} s)"
    elif exitcode == -signal.SIGKILL:
        why = f"was killed (SIGKILL: out of memory, limits.toolMemoryMb = {spec.memory_mb} MB, or the system)"
    elif exitcode is not None and exitcode < 0:
        why = f"crashed ({signal.Signals(-exitcode).name})"
    else:
        why = f"exited with status {exitcode}"
    return f"tool {name!r} failed: its process {why}; the call's effects are unknown"


class ProcessRunner:
    """Runs the instance's own tools in its child process; others go to `fallback`."""

    def __init__(
        self,
        spec: ChildSpec,
        *,
        child_tools: set[str],
        timeout: float,
        cpu_seconds: float | None,
        fallback: ToolRunner,
        on_change: Callable[..., int | None] | None = None,
        before_call: Callable[[], None] | None = None,
        on_unreported: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        #: Journals one reported change in the worker (`JournalVFS.record`); the bytes it keeps.
        self.on_change = on_change
        #: Called when a call's process ended before answering (killed, out of memory, timed
        #: out, cancelled): it may have changed the file without reporting it (`must_checkpoint`).
        self.on_unreported = on_unreported
        #: Marks the instance's file changed before a call (the child writes it itself, and a
        #: kill before its report is journaled must not leave a copy marked clean: a backup).
        self.before_call = before_call
        self.child_tools = child_tools
        self.timeout = timeout
        self.cpu_seconds = cpu_seconds
        self.fallback = fallback
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._closed = False
        #: Bytes of changes one call may report before it is stopped (see CALL_CHANGES_FILES).
        self.max_call_changes = CALL_CHANGES_FILES * Limits.model_validate(spec.limits).max_file_bytes
        self._reported = 0  # by the call in progress

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (memory figures count it)."""
        proc = self._proc
        return int(proc.pid) if proc is not None and proc.exitcode is None else None

    def _start(self) -> tuple[Any, Connection]:
        ctx = mp_context()
        parent, child = ctx.Pipe()
        # A socketpair made under gevent is non-blocking; we select() before every recv instead.
        os.set_blocking(parent.fileno(), True)
        # The secrets and log setup of now: MCP servers register theirs after the runner is made.
        spec = dataclasses.replace(self.spec, secrets=secret_digests(), log=logs.configured())
        proc = ctx.Process(target=child_main, args=(child, spec), name=f"regina-tools-{self.spec.instance_id}")
        proc.daemon = True
        # start() blocks in os.read until the fork server reports the child's pid (the first time,
        # until the server has imported the preloaded modules: seconds on a busy machine), so it
        # runs in a real thread, never on the gevent hub.
        with _start_lock:
            try:
                thread_pool().submit(proc.start).result(timeout=_START_TIMEOUT)
            except concurrent.futures.TimeoutError:
                child.close()
                parent.close()
                raise ToolError(f"the tool process did not start within {_START_TIMEOUT:g} s") from None
        child.close()
        self._proc, self._conn = proc, parent
        if not _wait([parent.fileno(), proc.sentinel], _START_TIMEOUT):
            self._stop()
            raise ToolError(f"the tool process did not start within {_START_TIMEOUT:g} s")
        try:
            kind, value = parent.recv()
        except (EOFError, OSError):
            code = self._stop()
            raise ToolError(f"the tool process died while starting (exit status {code})") from None
        if kind != "ready":
            self._stop()
            raise ToolError(str(value))
        return proc, parent

    def _stop(self, grace: float = 0.0, drain: bool = False) -> int | None:
        """Stop the child (pipe closed first, so an idle child exits by itself) and reap it.

        `drain`: kill it first and journal the changes it reported before that (a call timed out)."""
        if drain and self._proc is not None and self._conn is not None:
            _kill(self._proc)
            if self._proc.exitcode is None:
                _wait([self._proc.sentinel], 5.0)
            while (answer := self._receive()) is not None and answer[0] != "dead":
                pass
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if grace and proc.exitcode is None:
            _wait([proc.sentinel], grace)
        alive = proc.exitcode is None
        _kill(proc)  # its group too, whether the child is still alive or not
        if alive:
            _wait([proc.sentinel], 5.0)
        proc.join(0)
        code = proc.exitcode
        if code is None:
            return None
        proc.close()
        return int(code)

    def close(self) -> None:
        """Stop the child for good (suspend, delete, shutdown)."""
        self._closed = True
        self.fallback.close()
        self.cancel()
        with self._lock:
            self._stop(grace=1.0)

    def cancel(self) -> None:
        """Fail the call in progress now: its child is killed (a fresh one serves the next call)."""
        proc = self._proc
        if self._lock.locked():  # a call in progress, its process perhaps still starting
            self._cancelled = True
            if proc is not None:
                _kill(proc)
        self.fallback.cancel()

    # -- calls -----------------------------------------------------------------------------

    def run(self, tool: Tool, args: dict[str, Any]) -> Any:
        # The child has the default and user tools of these names; an inline tool of the same
        # name (an MCP tool, `delegate`: they win the merge) is another tool and runs here.
        if tool.inline or tool.name not in self.child_tools:
            return self.fallback.run(tool, args)
        with self._lock:
            if self._closed:
                raise ToolError(f"tool {tool.name!r}: the instance is being released")
            self._cancelled = False
            if self.before_call is not None:
                self.before_call()
            try:
                return self._call(tool.name, args)
            except ToolError:
                if self._proc is None and self.on_unreported is not None:  # stopped: not an answer
                    self.on_unreported()
                raise

    def _receive(self) -> tuple[str, Any] | None:
        """The next answer waiting on the pipe, journaling the changes reported before it
        (None: nothing more to read now; ("dead", None): the pipe ended with the child;
        ("too_much", None): the call's changes just passed `max_call_changes`)."""
        conn = self._conn
        while conn is not None and conn.poll(0):
            try:
                kind, value = conn.recv()
            except Exception:  # noqa: BLE001 - EOF, or a message cut short by the child's death
                return "dead", None
            if kind != "journal":
                return kind, value
            held = self.on_change(*value) if self.on_change is not None else None
            below = self._reported <= self.max_call_changes
            self._reported += held if isinstance(held, int) else _change_bytes(value)
            if below and self._reported > self.max_call_changes:
                return "too_much", None
        return None

    def _call(self, name: str, args: dict[str, Any]) -> Any:
        proc, conn = (self._proc, self._conn) if self._alive() else self._start()
        assert conn is not None
        if self._cancelled:  # while its process started: nothing was sent
            raise ToolError(f"tool {name!r} was cancelled")
        started = time.monotonic()
        self._reported = 0
        try:
            conn.send((name, args, self.cpu_seconds))
        except (OSError, ValueError):
            pass  # the child is gone: reported below from its exit status
        while True:  # changes reported as the call goes, then its answer, its death or the timeout
            ready = _wait([conn.fileno(), proc.sentinel], max(0.0, started + self.timeout - time.monotonic()))
            answer = self._receive()  # a dead child's pipe is read to its end here
            if answer is not None or not ready or proc.sentinel in ready:
                break
        if answer is not None and answer[0] == "too_much":
            # Killed, then its pipe read to the end: what it reported is journaled (a socket
            # buffer's worth more at most); a change it made and had not reported yet is on the
            # file only, and `on_unreported` (run) backs the file up for it. The next call's
            # fresh process opens the file, which the journal then describes.
            log.warning(
                "tool %s of %s reported more than %d bytes of changes: stopping its process",
                name,
                self.spec.instance_id,
                self.max_call_changes,
            )
            self._stop(drain=True)
            raise ToolError(
                f"tool {name!r} changed files by more than {self.max_call_changes} bytes in one call "
                f"({CALL_CHANGES_FILES} × limits.maxFileBytes, held by the worker until the step ends) "
                "and was stopped; the changes it made before are kept. Change less per call."
            )
        if answer is not None and answer[0] != "dead":
            kind, value = answer
            if kind == "ok":
                return value
            if kind == "error":
                raise ToolError(str(value))
            self._stop(grace=1.0)  # "fatal"
            raise ToolError(str(value))
        if self._cancelled:
            self._stop()
            raise ToolError(f"tool {name!r} was cancelled; its process was stopped")
        if not ready:
            log.warning("tool %s of %s ran past %g s: stopping its process", name, self.spec.instance_id, self.timeout)
            self._stop(drain=True)
            raise ToolError(timeout_message(name, self.timeout, stopped=True))
        code = self._stop(grace=1.0)
        took = time.monotonic() - started
        log.warning("tool process of %s died after %.1f s (exit %s)", self.spec.instance_id, took, code)
        raise ToolError(_death(name, code, self.spec, self.cpu_seconds))

    def _alive(self) -> bool:
        proc = self._proc
        if proc is None or self._conn is None:
            return False
        if proc.exitcode is not None:
            self._stop()
            return False
        return True
