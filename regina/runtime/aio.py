"""Run coroutines from sync code, with or without gevent.

`asyncio.run()` per call breaks when several greenlets of one thread call it (the thread's
event loop is seen as already running). Instead, every coroutine runs on ONE background event
loop, started lazily in a `threading.Thread`; under gevent monkey patching that "thread" is a
greenlet and waiting on the result yields to the other greenlets. The loop is re-created after a
fork (the child does not inherit the loop's thread).

Threads that run tools (regina.runtime.tools.runner) and tool child processes call
`use_own_loop()`: `run_coro` there runs the coroutine on that thread's own loop, so a CPU-bound
coroutine (the `bash` interpreter) never runs on the gevent hub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_loop_ident: int | None = None
_local = threading.local()


def use_own_loop() -> None:
    """Make `run_coro` in the calling thread run coroutines on a loop of this thread's own."""
    if getattr(_local, "loop", None) is None:
        _local.loop = asyncio.new_event_loop()


def _own_loop() -> asyncio.AbstractEventLoop | None:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is not None and loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    global _loop_ident
    # threading.get_ident() is the greenlet's id under gevent monkey patching, so this tells the
    # loop's own thread/greenlet apart from other greenlets sharing its OS thread (for which
    # asyncio.get_running_loop() also reports this loop).
    _loop_ident = threading.get_ident()
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared background event loop (started on first use)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_run_loop, args=(loop, ready), name="regina-aio", daemon=True)
            thread.start()
            ready.wait()
            _loop, _pid = loop, os.getpid()
        return _loop


def run_coro(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the background loop and wait for its result.

    Raises TimeoutError after `timeout` seconds (the coroutine is cancelled). Must not be called
    from the background loop itself (that would deadlock): RuntimeError then.
    """
    own = _own_loop()
    if own is not None:
        try:
            return own.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
    loop = background_loop()
    if threading.get_ident() == _loop_ident:
        coro.close()
        raise RuntimeError("run_coro() called from the background loop itself; await the coroutine")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"coroutine did not finish within {timeout} s") from None
    except BaseException:  # the waiting greenlet interrupted (a run cancelled): stop the coroutine too
        future.cancel()
        raise
