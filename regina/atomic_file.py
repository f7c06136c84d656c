"""Writing a file so that a crash leaves either the old content or the new, never half of it.

Temp file in the same directory (written whole, or by a callback as a download arrives), fsync,
rename over the target, then fsync the directory (POSIX persists a rename only once its
directory is synced). Used by the VFS backends, snapshot restore and the filesystem storage
adapter.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["write_atomic", "write_atomic_from", "fsync_dir", "Blocking", "run_here"]

#: Runs a call that may wait long on the disk: where it stops nothing else (a worker passes the
#: snapshot pool's real threads; `run_here` runs it on the calling thread).
Blocking = Callable[[Callable[[], None]], None]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames and creations in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int | None = None,
    prefix: str = ".tmp-",
    suffix: str = "",
    before_replace: Callable[[str], None] | None = None,
) -> None:
    """Replace `path` with `data` atomically and durably.

    `mode` sets the new file's permission bits (mkstemp creates 0600); `before_replace` runs
    with the temp file's path after the data is on disk and just before the rename (snapshot
    restore checks the file and removes a stale WAL there). The temp file is removed on any
    failure.
    """

    def fill(out: BinaryIO) -> bool:
        out.write(data)
        return True

    write_atomic_from(path, fill, mode=mode, prefix=prefix, suffix=suffix, before_replace=before_replace)


def write_atomic_from(
    path: str | os.PathLike[str],
    fill: Callable[[BinaryIO], bool],
    *,
    mode: int | None = None,
    prefix: str = ".tmp-",
    suffix: str = "",
    before_replace: Callable[[str], None] | None = None,
    blocking: Blocking | None = None,
) -> bool:
    """`write_atomic` for content `fill` writes into the temp file it is given (a download
    streamed to disk, never whole in memory). `fill` returns False when it has nothing: the temp
    file goes, `path` stays as it was, and this returns False. `blocking` runs the long waits
    (the fsync of the whole file, `before_replace`) where they stop nothing else: a worker
    passes a real thread, since on gevent's hub they would stop every greenlet."""
    run = blocking or run_here
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            filled = fill(fh)
            if filled:
                fh.flush()
                run(lambda: os.fsync(fh.fileno()))
        if not filled:
            os.remove(tmp)
            return False
        if mode is not None:
            os.chmod(tmp, mode)
        if before_replace is not None:
            check = before_replace
            run(lambda: check(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(directory)
    return True


def run_here(call: Callable[[], None]) -> None:
    """`Blocking` on the calling thread."""
    call()
