"""How many bytes an instance's VFS takes on its worker's disk now (the fleet view's `vfsBytes`)."""

from __future__ import annotations

import os
from typing import Any

from regina.vfs.sqlite import SQLiteVFS


def live_bytes(vfs: Any) -> int | None:
    """The VFS file's size with its write-ahead log, read from the file system (no SQLite call,
    no lock: a step may be writing). None for a VFS kept elsewhere (memory, a real directory, a
    factory's own): its figure stays the one its last backup recorded."""
    base = getattr(vfs, "inner", vfs)  # a JournalVFS records changes for the VFS it wraps
    if not isinstance(base, SQLiteVFS) or base.path == ":memory:":
        return None
    total = 0
    for path in (base.path, base.path + "-wal"):
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            if path == base.path:
                return None  # deleted meanwhile
    return total
