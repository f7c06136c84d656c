"""The body of an instance's tool process (`useProcesses`; parent side in `process.py`).

Started from multiprocessing's fork server (a clean interpreter with this module preloaded, so a
child starts in milliseconds and shares the imported code with its siblings). It opens the
instance's VFS itself (SQLite's file locking makes the worker and the child safe on one file;
`realdir` is a directory both see), builds the instance's tools, sets its rlimits and then
answers calls on its pipe until the pipe closes:

    parent -> child: (tool_name, args, cpu_seconds)
    child -> parent: ("ready", None) once, then ("ok", result) | ("error", message) per call,
                     or ("fatal", message): the call failed and the child exits (MemoryError);
                     before that, ("journal", [op, args…]) for each VFS change the call made

With `journal` set (the worker journals the instance: regina/journal.py) the child's VFS reports
every change it makes, as it makes it, so the worker journals the tools' writes exactly like its
own, and a call cut short (killed, crashed, timed out) still reports what it changed before.

The environment is the allow-listed one (`allowedEnv`), not the worker's. RLIMIT_AS caps the
address space for the child's whole life; RLIMIT_CPU is moved before each call to the CPU time
used so far plus `cpu_seconds`, so the limit is per call although the child is reused. Past it
the kernel sends SIGXCPU and the child dies; the parent reports that call's failure.

The child leads a session (process group) of its own, which the processes its tools start
inherit: the parent stops the whole group, and the child kills it when its worker is gone.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from regina.config import Limits
from regina.errors import ReginaError
from regina.secrets import Digests
from regina.vfs.recording import RecordingVFS

MB = 1024 * 1024


@dataclass(frozen=True)
class ChildSpec:
    """Everything a tool process needs to rebuild the instance's tools (pickled to it)."""

    instance_id: str
    vfs_backend: str
    vfs_dir: str
    fs_root_path: str | None
    vfs_synchronous: str
    env: dict[str, str]
    limits: dict[str, Any]
    network: bool
    tool_paths: tuple[str, ...] = field(default=())
    memory_mb: int | None = None
    worker_pid: int = field(default_factory=os.getpid)
    journal: bool = False
    #: The worker's secrets as salted digests (`regina.secrets.secret_digests`: tool code runs
    #: here, so never the values) and (role, level, fmt) of its log (regina/logs.py), filled in
    #: when a child starts: its log lines are redacted and formatted like the worker's own.
    secrets: Digests | None = field(default=None, repr=False)
    log: tuple[str, str, str] | None = None


def _set_memory_limit(memory_mb: int | None) -> None:
    if memory_mb:
        limit = memory_mb * MB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_cpu_budget(seconds: float | None) -> None:
    if seconds:
        soft = int(_cpu_used() + seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


class _ReportedVFS(RecordingVFS):
    """The child's VFS when the worker journals: each change goes to the worker as it happens."""

    def __init__(self, inner: Any, send: Callable[[tuple[str, Any]], None]) -> None:
        super().__init__(inner)
        self._send = send

    def record(self, op: str, *args: Any) -> None:
        self._send(("journal", [op, *args]))


def _build(spec: ChildSpec, send: Callable[[tuple[str, Any]], None]) -> dict[str, Any]:
    from regina.runtime.tools.loading import load_tool_module
    from regina.runtime.tools.toolset import build_tools
    from regina.vfs import open_vfs

    vfs: Any = open_vfs(
        spec.vfs_backend,  # type: ignore[arg-type]
        spec.instance_id,
        spec.vfs_dir,
        spec.fs_root_path,
        spec.vfs_synchronous,
    )
    if spec.journal:
        vfs = _ReportedVFS(vfs, send)
    user_tools = {}
    for path in spec.tool_paths:
        tool = load_tool_module(path)
        user_tools[tool.name] = tool
    limits = Limits.model_validate(spec.limits)
    return dict(build_tools(vfs, env=spec.env, limits=limits, network=spec.network, user_tools=user_tools))


def _answer(tools: dict[str, Any], name: str, args: dict[str, Any], memory_mb: int | None) -> tuple[str, Any]:
    """(kind, value) for one call; kind "fatal" means: answer, then exit."""
    from regina.runtime.tools.runner import call_here

    tool = tools.get(name)
    if tool is None:
        return "error", f"unknown tool {name!r} in the tool process"
    try:
        return "ok", call_here(tool, args)
    except ReginaError as exc:
        return "error", exc.message
    except MemoryError:
        # The heap may be left in pieces: answer, then let the parent start a fresh child.
        return "fatal", f"tool {name!r} ran out of memory (limits.toolMemoryMb = {memory_mb} MB)"
    except Exception as exc:  # a tool's own bug: reported to the model, like in a thread
        return "error", f"tool {name!r} failed: {type(exc).__name__}: {exc}"


PRELOAD = (
    "regina.runtime.tools.child",
    "regina.logs",
    "regina.secrets",
    "regina.runtime.tools.toolset",
    "regina.runtime.tools.loading",
    "regina.vfs",
    "regina.vfs.recording",
    "just_bash",
    "just_bash.commands",
    "just_bash.fs",
    "just_bash.interpreter.errors",
)
"""Imported once by the fork server, so a child starts without importing them again."""


def _log_like_the_worker(spec: ChildSpec) -> None:
    """Log as the worker does, to the stderr it shares with us: Regina's format and level, and
    every secret redacted (our environment holds none of them: they come in the spec)."""
    from regina.logs import configure
    from regina.secrets import install_log_redaction, refresh_secrets, use_secret_digests

    if spec.secrets is not None:
        use_secret_digests(spec.secrets)
    refresh_secrets()  # the environment's secrets are read again: ours is the allow-listed one
    install_log_redaction()
    role, level, fmt = spec.log or ("worker", "WARNING", "text")
    configure(role, level, fmt)


def _lead_own_group() -> None:
    """Lead a session (and process group) of our own, so that every process a tool starts
    (`subprocess.Popen`, inherited by theirs) is in it: the worker stops the whole group
    (`os.killpg`) and none is left running, reparented to init, after a timeout, a cancel or a
    close. A group of the fork server's would take the server and its siblings with it."""
    if os.getpgrp() != os.getpid():
        os.setsid()


def _end_group() -> None:
    """Kill this child's process group, the child included: the worker let go of us (its pipe
    ended, or it exited) and no process a tool started may outlive it."""
    if os.getpgrp() == os.getpid():  # never a group we do not lead (the fork server's)
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(0)


def _exit_with_worker(worker_pid: int) -> None:
    """Exit, with every process the tools started, as soon as the worker exits, however it exits
    (kill -9 too), even in the middle of a stuck call. (The fork server cannot do it: every child
    it forks holds its keep-alive pipe.)"""
    try:
        fd = os.pidfd_open(worker_pid)
    except ProcessLookupError:
        _end_group()
    except (AttributeError, OSError):  # not Linux ≥ 5.3: the pipe's EOF still ends an idle child
        return

    def watch() -> None:
        select.select([fd], [], [])
        _end_group()

    threading.Thread(target=watch, name="regina-worker-watch", daemon=True).start()


def child_main(conn: Connection, spec: ChildSpec) -> None:
    """Serve tool calls for one instance until the parent closes the pipe."""
    _lead_own_group()
    _exit_with_worker(spec.worker_pid)
    os.set_blocking(conn.fileno(), True)  # made by a gevent-patched socketpair: non-blocking
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker, which then stops us
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)  # RLIMIT_CPU must kill (an inherited SIG_IGN would not)
    os.environ.clear()
    os.environ.update(spec.env)
    _log_like_the_worker(spec)
    from regina.runtime.aio import use_own_loop

    use_own_loop()
    lock = threading.Lock()  # a tool's own threads may change files while the answer goes out

    def send(message: tuple[str, Any]) -> None:
        with lock:
            conn.send(message)

    try:
        tools = _build(spec, send)
    except ReginaError as exc:
        conn.send(("error", f"tool process for {spec.instance_id} could not start: {exc.message}"))
        return
    _set_memory_limit(spec.memory_mb)
    conn.send(("ready", None))
    while True:
        try:
            name, args, cpu_seconds = conn.recv()
        except (EOFError, OSError):  # closed by the worker, or by its death
            _end_group()
        _set_cpu_budget(cpu_seconds)
        kind, value = _answer(tools, name, args, spec.memory_mb)
        try:
            send((kind, value))
        except MemoryError:
            return
        except Exception as exc:  # a result pickle cannot carry
            send(("error", f"tool {name!r} returned a result that cannot be sent back: {exc}"))
        if kind == "fatal":
            return
