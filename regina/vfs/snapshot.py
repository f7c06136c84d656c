"""The VFS snapshot format, shared by every backend: a SQLite database image of this layout.

Layout (schema version 1, stored as meta key ``vfs.schema``)::

    entries(path TEXT PRIMARY KEY, parent TEXT, is_dir INTEGER, data BLOB, mode INTEGER, mtime REAL)
    chunks(path TEXT, seq INTEGER, data BLOB, PRIMARY KEY (path, seq))
    meta(key TEXT PRIMARY KEY, value TEXT)

Snapshots are the bytes SQLite's online backup API into an in-memory database, then
``serialize()``, gives (`database_image` serializes the source itself: half the memory).
`check_snapshot` validates an image before anything is restored from it (`check_snapshot_file`
one in a file); `restore_snapshot_from` writes one, as storage streams it, to a SQLite file
atomically. `SQLiteVFS`, `MemoryVFS` and `RealDirVFS` all produce
and accept this format, so a backup moves between them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import quote

from regina.atomic_file import Blocking, write_atomic_from
from regina.errors import VFSError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "create_schema",
    "database_image",
    "rollback_header",
    "check_snapshot",
    "check_snapshot_file",
    "restore_snapshot",
    "restore_snapshot_from",
]

SCHEMA_VERSION = "1"
"""Stored as meta key ``vfs.schema``."""

#: The first bytes of every SQLite database file.
MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    path   TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    data   BLOB NOT NULL DEFAULT x'',
    mode   INTEGER NOT NULL,
    mtime  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_parent ON entries(parent);
CREATE TABLE IF NOT EXISTS chunks (
    path TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (path, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

ROOT_MODE = 0o755


def create_schema(cur: sqlite3.Cursor, root_mtime: float | None = None) -> None:
    """The layout, the root directory (modified now, or at `root_mtime`) and the schema version
    (idempotent; inside a transaction)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            cur.execute(statement)
    cur.execute(
        "INSERT OR IGNORE INTO entries(path, parent, is_dir, data, mode, mtime) VALUES ('/', '', 1, x'', ?, ?)",
        (ROOT_MODE, time.time() if root_mtime is None else root_mtime),
    )
    cur.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('vfs.schema', ?)", (SCHEMA_VERSION,))


def database_image(source: sqlite3.Connection) -> bytes:
    """A consistent image of the database behind `source`: what SQLite's backup API into a new
    in-memory database, then `serialize()`, gives (the format since the start), without that
    database.

    `serialize()` of the source copies its pages in one read transaction (consistent while
    other connections write); the header fields a backup rewrites are set as it sets them (the
    page count, and the schema cookie bumped from the new database's 0) with the WAL mark
    (`rollback_header`), in one more copy. Peak about twice the database, not four times
    (in-memory database, its serialized copy, a slice and the joined result at once).
    """
    image = source.serialize()
    if len(image) < 100:
        return image  # no database yet: nothing a VFS snapshots
    size = int.from_bytes(image[16:18], "big")
    pages = len(image) // (65536 if size == 1 else size)  # 1 stands for 65536
    wal = image[18:20] == b"\x02\x02"
    view = memoryview(image)
    return b"".join(
        (
            view[:18],
            b"\x01\x01" if wal else view[18:20],
            view[20:28],
            pages.to_bytes(4, "big"),  # the in-header database size, as backupOnePage writes it
            view[32:40],
            (1).to_bytes(4, "big"),  # the schema cookie: the new database's 0, plus one
            view[44:],
        )
    )


def rollback_header(image: bytes) -> bytes:
    """Mark a complete image as a rollback-journal database (header bytes 18-19 = 1).

    A backup of a WAL database keeps "WAL" in its header; such an image cannot be deserialized
    into memory. The image holds every committed page, so no WAL content is lost by this. One
    copy of the image (a memoryview for its rest, not a slice).
    """
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        return b"".join((image[:18], b"\x01\x01", memoryview(image)[20:]))
    return image


def check_snapshot(data: bytes) -> None:
    """Raise VFSError unless `data` is a SQLite image holding a VFS (integrity checked)."""
    if not data.startswith(MAGIC):
        raise VFSError("snapshot is not a SQLite database image")
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(rollback_header(data))
        _check_vfs(conn)
    except sqlite3.DatabaseError as exc:
        raise VFSError(f"snapshot is not a valid SQLite database: {exc}") from exc
    finally:
        conn.close()


def check_snapshot_file(path: str) -> None:
    """`check_snapshot` for an image in a file, read where it is (SQLite's page cache, not a copy
    in memory). Opened immutable: nothing is written to it or beside it, even when its header
    says WAL."""
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise VFSError("snapshot is not a SQLite database image")
    conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?immutable=1", uri=True)
    try:
        _check_vfs(conn)
    except sqlite3.DatabaseError as exc:
        raise VFSError(f"snapshot is not a valid SQLite database: {exc}") from exc
    finally:
        conn.close()


def _check_vfs(conn: sqlite3.Connection) -> None:
    """VFSError unless the database behind `conn` passes its integrity check and has a VFS's tables."""
    ok = conn.execute("PRAGMA integrity_check").fetchone()
    if not ok or ok[0] != "ok":
        raise VFSError(f"snapshot failed its integrity check: {ok}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"entries", "meta"} <= tables:
        raise VFSError("snapshot is not a Regina VFS (missing tables)")


def restore_snapshot(path: str, data: bytes) -> None:
    """Write a snapshot to the SQLite file `path` atomically (`restore_snapshot_from`)."""

    def fill(out: BinaryIO) -> bool:
        out.write(data)
        return True

    restore_snapshot_from(path, fill)


def restore_snapshot_from(path: str, fill: Callable[[BinaryIO], bool], blocking: Blocking | None = None) -> bool:
    """Write the snapshot `fill` writes into the file it is given (a backup streamed from
    storage) to the SQLite file `path` atomically (`regina.atomic_file`); False, and `path` left
    as it was, when `fill` has none.

    The image is checked in its temp file before it replaces anything, never held whole in
    memory. Any ``-wal``/``-shm`` files left next to `path` are removed just before the rename (a
    stale WAL must never be replayed over the restored image). No SQLiteVFS may have `path` open
    while this runs. `blocking` runs the fsync and the check (a whole-file integrity check) as
    `write_atomic_from` says.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def check_then_drop_journals(tmp: str) -> None:
        check_snapshot_file(tmp)
        for suffix in ("-wal", "-shm", "-journal"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass

    return write_atomic_from(
        path, fill, prefix=".restore-", suffix=".sqlite", before_replace=check_then_drop_journals, blocking=blocking
    )
