"""Writing a file so that a crash leaves either the old content or the new, never half of it.

Temp file in the same directory, fsync, rename over the target, then fsync the directory (POSIX
persists a rename only once its directory is synced). Used by the VFS backends, snapshot
restore and the filesystem storage adapter.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable

__all__ = ["write_atomic", "fsync_dir"]


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
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Replace `path` with `data` atomically and durably.

    `mode` sets the new file's permission bits (mkstemp creates 0600); `before_replace` runs
    after the data is on disk and just before the rename (snapshot restore removes a stale WAL
    there). The temp file is removed on any failure.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(directory)
