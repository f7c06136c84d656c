"""Where a tool call executes: never on the worker's gevent hub (docs/isolation.md).

A worker runs every instance's steps as greenlets of one thread; a tool that computes for
seconds there would stop every other instance, the Celery consumer and the membership heartbeat.
So the agentic loop hands each call to a `ToolRunner`:

- `ThreadRunner` (default): the call runs in a real OS thread of a shared pool (gevent's
  `ThreadPoolExecutor` when the process is monkey patched, the standard one otherwise); async
  tools get that thread's own event loop. The hub keeps getting the GIL every switch interval
  (5 ms), so heartbeats and other instances go on while a pure-Python tool spins. A call past
  `limits.toolTimeout` fails with a clear tool error; its thread cannot be stopped and is left
  to finish on its own (processes can be stopped: see `regina.runtime.tools.process`).
- `ProcessRunner` (`useProcesses`): the instance's own child process, with rlimits.
- Tools marked `inline` (I/O-bound tools whose state lives on the worker's event loop, such as
  MCP sessions) run where the loop runs, as before.

`cancel()` makes the call in progress fail at once with a tool error (a run being cancelled).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any, Protocol

from regina.errors import ToolError
from regina.runtime.aio import run_coro, use_own_loop
from regina.runtime.tools.base import Tool
from regina.vfs.guarded import bind_call

__all__ = ["ToolRunner", "InlineRunner", "ThreadRunner", "call_here", "thread_pool"]

log = logging.getLogger(__name__)


class ToolRunner(Protocol):
    """Runs one tool call somewhere and returns its JSON-able result (ToolError on failure)."""

    def run(self, tool: Tool, args: dict[str, Any]) -> Any: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


def call_here(tool: Tool, args: dict[str, Any]) -> Any:
    """Validate and run `tool` in the calling thread (async tools on its loop via run_coro)."""
    if tool.is_async:
        return run_coro(tool.call_async(args))
    return tool.call_sync(args)


class InlineRunner:
    """Runs calls in the caller's thread: tests, and tools that must stay on the worker's loop."""

    def run(self, tool: Tool, args: dict[str, Any]) -> Any:
        return call_here(tool, args)

    def cancel(self) -> None:
        """Inline calls cannot be interrupted."""

    def close(self) -> None:
        """Nothing to release."""


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("threading"))


class _Withdrawn:
    """Set by the caller when it stopped waiting (timeout, cancel): a call still queued for a
    thread then never starts — the model was told it did not run. A plain flag: set from the
    hub's thread, read in the tool's, under the GIL."""

    is_set = False


def _in_tool_thread(tool: Tool, args: dict[str, Any], withdrawn: _Withdrawn) -> Any:
    if withdrawn.is_set:
        return None
    use_own_loop()
    bind_call(withdrawn)  # once withdrawn, the call's file changes are refused (regina/vfs/guarded.py)
    try:
        return call_here(tool, args)
    finally:
        bind_call(None)


_pools: dict[str, concurrent.futures.Executor] = {}
_pool_lock = threading.Lock()


def thread_pool(size: int = 32) -> concurrent.futures.Executor:
    """The process-wide pool of real OS threads tools run in (created on first use)."""
    return _real_threads("regina-tool", size)


def snapshot_pool() -> concurrent.futures.Executor:
    """Real OS threads for backup snapshots, apart from the tools': an abandoned tool keeps its
    thread for good, and a pool full of them must not hold up every suspend and checkpoint."""
    return _real_threads("regina-snapshot", 2)


def _real_threads(name: str, size: int) -> concurrent.futures.Executor:
    """A named pool of real OS threads (gevent's under monkey patching), made on first use."""
    with _pool_lock:
        pool = _pools.get(name)
        if pool is None:
            if _gevent_patched():
                from gevent.threadpool import ThreadPoolExecutor as GeventPool

                pool = GeventPool(max_workers=size)
            else:
                pool = concurrent.futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
            _pools[name] = pool
        return pool


Future = concurrent.futures.Future


def wait_first(future: Future[Any], cancelled: Future[Any], timeout: float) -> bool:
    """Wait for `future` or `cancelled`; False on timeout. Cooperative under gevent."""
    done, _ = concurrent.futures.wait([future, cancelled], timeout, return_when=concurrent.futures.FIRST_COMPLETED)
    return bool(done)


class ThreadRunner:
    """Runs calls in the shared thread pool; one runner per instance (cancel is per instance)."""

    def __init__(self, timeout: float, pool: concurrent.futures.Executor | None = None) -> None:
        self.timeout = timeout
        self.pool = pool or thread_pool()
        self._cancelled: concurrent.futures.Future[Any] | None = None

    def run(self, tool: Tool, args: dict[str, Any]) -> Any:
        if tool.inline:
            return call_here(tool, args)
        cancelled: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._cancelled = cancelled
        withdrawn = _Withdrawn()
        try:
            future = self.pool.submit(_in_tool_thread, tool, args, withdrawn)
            if not wait_first(future, cancelled, self.timeout):
                withdrawn.is_set = True
                log.warning("tool %s still running after %g s; abandoned in its thread", tool.name, self.timeout)
                raise ToolError(timeout_message(tool.name, self.timeout, stopped=False))
            if not future.done():
                withdrawn.is_set = True
                raise ToolError(f"tool {tool.name!r} was cancelled")
            return future.result()
        finally:
            self._cancelled = None

    def cancel(self) -> None:
        cancelled = self._cancelled
        if cancelled is not None and not cancelled.done():
            cancelled.set_result(None)

    def close(self) -> None:
        self.cancel()


def timeout_message(name: str, timeout: float, *, stopped: bool) -> str:
    """The error the model sees for a call that ran past `limits.toolTimeout`."""
    fate = "was stopped" if stopped else "was abandoned"
    return (
        f"tool {name!r} timed out after {timeout:g} s (limits.toolTimeout) and {fate}; "
        "its effects are unknown. Try a smaller request."
    )
