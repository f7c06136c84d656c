"""In-memory VFS: a SQLiteVFS on ``":memory:"``, so it has exactly the same semantics and the
same snapshot format (a SQLite database image) as the default backend. Lost on process exit."""

from __future__ import annotations

from regina.vfs.snapshot import SCHEMA, check_snapshot, rollback_header
from regina.vfs.sqlite import SQLiteVFS


class MemoryVFS(SQLiteVFS):
    """A VFS held in memory (one private in-memory SQLite database)."""

    def __init__(self) -> None:
        super().__init__(":memory:", synchronous="OFF")

    @classmethod
    def from_snapshot(cls, data: bytes) -> MemoryVFS:
        """A new MemoryVFS holding the files and meta of a `snapshot()` image (any backend)."""
        check_snapshot(data)
        vfs = cls()
        with vfs._lock:
            conn = vfs._connection()
            conn.deserialize(rollback_header(data))
            conn.executescript(SCHEMA)  # tables added since the image was taken
        return vfs
