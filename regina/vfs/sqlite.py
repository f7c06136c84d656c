"""SQLite-backed VFS: one database file per instance (the default backend, SPEC §5).

Layout and snapshot format: `regina.vfs.snapshot`. The root "/" is always a directory row;
``parent`` is indexed so ``listdir`` does not scan. A file's content is ``entries.data``
followed by its ``chunks`` in ``seq`` order: ``append`` inserts one small chunk row
(O(appended bytes), not O(file size) — the session JSONL grows by appends), and every
``_MERGE_AT`` chunks they are folded back into ``entries.data`` (amortized).

Durability: the database is in WAL mode and every write is committed before the method returns.
The default ``synchronous=FULL`` fsyncs the WAL on each commit, so a write acknowledged to the
model survives a process kill *and* a power loss/OS crash. ``NORMAL`` survives a process kill
only (the WAL may lose its last commits on power loss) and is several times faster on slow
disks; pass ``synchronous="NORMAL"`` when that trade is acceptable.

Thread safety: one connection (``check_same_thread=False``) guarded by an ``RLock``; under gevent
monkey patching that lock is cooperative, so several greenlets may share one instance.

For a file database a snapshot reads through a *separate* connection inside one read
transaction (its `serialize()`), so it sees exactly one committed state (WAL snapshot
isolation) without blocking writers on the VFS's own connection, and takes no lock of this
VFS: the host runs it in its snapshot thread pool, off the worker's gevent hub.
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from regina.errors import DirectoryNotEmpty, IsADirectory, NoSuchPath, NotADirectory, PathExists, VFSError
from regina.vfs.base import FileStat, check_range, normalize
from regina.vfs.snapshot import create_schema, database_image

_DIR_MODE = 0o755
_FILE_MODE = 0o644
_SYNC_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
_MERGE_AT = 256  # appended chunks per file before they are folded into entries.data


def _parent(path: str) -> str:
    return posixpath.dirname(path) if path != "/" else ""


def _subtree_bounds(path: str) -> tuple[str, str]:
    """Range [lo, hi) holding every path strictly below `path` ('0' sorts right after '/')."""
    prefix = "/" if path == "/" else path + "/"
    return prefix, prefix[:-1] + "0"


class SQLiteVFS:
    """A VFS stored in one SQLite file (or ``":memory:"``)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", connect: bool = True) -> None:
        """`connect=False` opens an existing VFS file parked: no connection until its first use
        (`regina.vfs.sqlite_files.create_parked` makes a new one that way)."""
        if synchronous.upper() not in _SYNC_LEVELS:
            raise VFSError(f"synchronous must be one of {_SYNC_LEVELS}, got {synchronous!r}")
        self.path = path
        self._lock = threading.RLock()
        self._closed = False
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        if connect or path == ":memory:":
            self._conn = self._connect()
            self._init_db()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened after `park()` (call with the lock held)."""
        if self._closed:
            raise VFSError("the filesystem is closed")
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def park(self) -> None:
        """Close the SQLite connection until the next use (frees its cache; an idle instance's VFS
        then costs its worker no SQLite memory). A no-op for ":memory:", which would lose its data."""
        with self._lock:
            if self._conn is not None and self.path != ":memory:":
                self._conn.close()
                self._conn = None

    def _init_db(self) -> None:
        with self._tx() as cur:  # schema and root entry in one transaction (one commit, not five)
            create_schema(cur)

    # -- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """Hold the lock and run one IMMEDIATE transaction; committed before returning."""
        with self._lock:
            cur = self._connection().cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                # In WAL mode the commit writes the changed pages: a full disk fails here, and
                # SQLite keeps the transaction open, so it is rolled back below like any error
                # (left open, every later BEGIN failed, even once the disk had room again).
                cur.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (disk full, out of memory): a ROLLBACK then
                # fails with "no transaction is active" and hides the error that ended it.
                if cur.connection.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._connection().cursor()
            try:
                yield cur
            finally:
                cur.close()

    @staticmethod
    def _kind(cur: sqlite3.Cursor, path: str) -> int | None:
        """1 for a directory, 0 for a file, None when missing."""
        row = cur.execute("SELECT is_dir FROM entries WHERE path = ?", (path,)).fetchone()
        return None if row is None else int(row[0])

    def _ensure_parents(self, cur: sqlite3.Cursor, path: str, now: float) -> None:
        missing: list[str] = []
        parent = _parent(path)
        while parent:
            kind = self._kind(cur, parent)
            if kind == 1:
                break
            if kind == 0:
                raise NotADirectory(f"not a directory: {parent}")
            missing.append(parent)
            parent = _parent(parent)
        for d in reversed(missing):
            cur.execute(
                "INSERT INTO entries(path, parent, is_dir, data, mode, mtime) VALUES (?, ?, 1, x'', ?, ?)",
                (d, _parent(d), _DIR_MODE, now),
            )

    @staticmethod
    def _merge_chunks(cur: sqlite3.Cursor, p: str) -> None:
        base = cur.execute("SELECT data FROM entries WHERE path = ?", (p,)).fetchone()[0]
        rows = cur.execute("SELECT data FROM chunks WHERE path = ? ORDER BY seq", (p,)).fetchall()
        merged = b"".join([bytes(base), *(bytes(r[0]) for r in rows)])
        cur.execute("UPDATE entries SET data = ? WHERE path = ?", (sqlite3.Binary(merged), p))
        cur.execute("DELETE FROM chunks WHERE path = ?", (p,))

    # -- VFS protocol -------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        p = normalize(path)
        with self._read() as cur:
            row = cur.execute("SELECT is_dir, data FROM entries WHERE path = ?", (p,)).fetchone()
            if row is None:
                raise NoSuchPath(f"no such file: {p}")
            if row[0]:
                raise IsADirectory(f"is a directory: {p}")
            chunks = cur.execute("SELECT data FROM chunks WHERE path = ? ORDER BY seq", (p,)).fetchall()
        if not chunks:
            return bytes(row[1])
        return b"".join([bytes(row[1]), *(bytes(c[0]) for c in chunks)])

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of a file, read with SQLite's incremental blob I/O from
        `entries.data` and the chunks after it: only the pages holding the range are read (a
        `substr` in SQL would load the whole value first). One read transaction, so the row, its
        chunks and their bytes are one committed state."""
        check_range(offset, length)
        p = normalize(path)
        parts: list[bytes] = []
        with self._read() as cur:
            conn = cur.connection
            began = not conn.in_transaction
            if began:
                cur.execute("BEGIN")
            try:
                row = cur.execute("SELECT rowid, is_dir, length(data) FROM entries WHERE path = ?", (p,)).fetchone()
                if row is None:
                    raise NoSuchPath(f"no such file: {p}")
                if row[1]:
                    raise IsADirectory(f"is a directory: {p}")
                pieces = [("entries", int(row[0]), int(row[2]))]
                pieces += [
                    ("chunks", int(r[0]), int(r[1]))
                    for r in cur.execute("SELECT rowid, length(data) FROM chunks WHERE path = ? ORDER BY seq", (p,))
                ]
                start, end, at = offset, offset + length, 0
                for table, rowid, size in pieces:
                    lo, hi = max(start, at), min(end, at + size)
                    if lo < hi:
                        with conn.blobopen(table, "data", rowid, readonly=True) as blob:
                            blob.seek(lo - at)
                            parts.append(blob.read(hi - lo))
                    at += size
                    if at >= end:
                        break
            finally:
                if began:
                    cur.execute("COMMIT")
        return b"".join(parts)

    def write(self, path: str, data: bytes) -> None:
        p = normalize(path)
        if p == "/":
            raise IsADirectory("is a directory: /")
        now = time.time()
        with self._tx() as cur:
            kind = self._kind(cur, p)
            if kind == 1:
                raise IsADirectory(f"is a directory: {p}")
            if kind is None:
                self._ensure_parents(cur, p, now)
            else:
                cur.execute("DELETE FROM chunks WHERE path = ?", (p,))
            cur.execute(
                "INSERT INTO entries(path, parent, is_dir, data, mode, mtime) VALUES (?, ?, 0, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET data = excluded.data, mtime = excluded.mtime",
                (p, _parent(p), sqlite3.Binary(bytes(data)), _FILE_MODE, now),
            )

    def append(self, path: str, data: bytes) -> None:
        p = normalize(path)
        now = time.time()
        with self._tx() as cur:
            cur.execute("UPDATE entries SET mtime = ? WHERE path = ? AND is_dir = 0", (now, p))
            if cur.rowcount:
                seq = cur.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM chunks WHERE path = ?", (p,)).fetchone()[0]
                cur.execute(
                    "INSERT INTO chunks(path, seq, data) VALUES (?, ?, ?)",
                    (p, seq, sqlite3.Binary(bytes(data))),
                )
                if seq >= _MERGE_AT:
                    self._merge_chunks(cur, p)
                return
            if p == "/" or self._kind(cur, p) == 1:
                raise IsADirectory(f"is a directory: {p}")
            self._ensure_parents(cur, p, now)
            cur.execute(
                "INSERT INTO entries(path, parent, is_dir, data, mode, mtime) VALUES (?, ?, 0, ?, ?, ?)",
                (p, _parent(p), sqlite3.Binary(bytes(data)), _FILE_MODE, now),
            )

    def exists(self, path: str) -> bool:
        p = normalize(path)
        with self._read() as cur:
            return self._kind(cur, p) is not None

    def stat(self, path: str) -> FileStat:
        p = normalize(path)
        with self._read() as cur:
            row = cur.execute(
                "SELECT is_dir, length(data) + COALESCE((SELECT SUM(length(c.data)) FROM chunks c "
                "WHERE c.path = entries.path), 0), mtime, mode FROM entries WHERE path = ?",
                (p,),
            ).fetchone()
        if row is None:
            raise NoSuchPath(f"no such file or directory: {p}")
        return FileStat(path=p, is_dir=bool(row[0]), size=int(row[1]), mtime=float(row[2]), mode=int(row[3]))

    def listdir(self, path: str) -> list[str]:
        p = normalize(path)
        with self._read() as cur:
            kind = self._kind(cur, p)
            if kind is None:
                raise NoSuchPath(f"no such directory: {p}")
            if kind == 0:
                raise NotADirectory(f"not a directory: {p}")
            rows = cur.execute("SELECT path FROM entries WHERE parent = ?", (p,)).fetchall()
        return sorted(posixpath.basename(r[0]) for r in rows)

    def mkdir(self, path: str, parents: bool = True) -> None:
        p = normalize(path)
        now = time.time()
        with self._tx() as cur:
            kind = self._kind(cur, p)
            if kind == 1:
                return
            if kind == 0:
                raise PathExists(f"file exists (not a directory): {p}")
            if parents:
                self._ensure_parents(cur, p, now)
            elif self._kind(cur, _parent(p)) != 1:
                raise NoSuchPath(f"parent directory does not exist: {_parent(p)}")
            cur.execute(
                "INSERT INTO entries(path, parent, is_dir, data, mode, mtime) VALUES (?, ?, 1, x'', ?, ?)",
                (p, _parent(p), _DIR_MODE, now),
            )

    def remove(self, path: str, recursive: bool = False) -> None:
        p = normalize(path)
        if p == "/":
            raise VFSError("cannot remove the root directory")
        with self._tx() as cur:
            kind = self._kind(cur, p)
            if kind is None:
                raise NoSuchPath(f"no such file or directory: {p}")
            if kind == 1:
                lo, hi = _subtree_bounds(p)
                has_children = cur.execute(
                    "SELECT 1 FROM entries WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)
                ).fetchone()
                if has_children:
                    if not recursive:
                        raise DirectoryNotEmpty(f"directory not empty: {p}")
                    cur.execute("DELETE FROM entries WHERE path >= ? AND path < ?", (lo, hi))
                    cur.execute("DELETE FROM chunks WHERE path >= ? AND path < ?", (lo, hi))
            cur.execute("DELETE FROM entries WHERE path = ?", (p,))
            cur.execute("DELETE FROM chunks WHERE path = ?", (p,))

    def rename(self, src: str, dst: str) -> None:
        s, d = normalize(src), normalize(dst)
        if s == "/" or d == "/":
            raise VFSError("cannot move the root directory")
        if s == d:
            return
        if d.startswith(s + "/"):
            raise VFSError(f"cannot move {s} into itself ({d})")
        now = time.time()
        with self._tx() as cur:
            skind = self._kind(cur, s)
            if skind is None:
                raise NoSuchPath(f"no such file or directory: {s}")
            if self._kind(cur, _parent(d)) != 1:
                raise NoSuchPath(f"destination directory does not exist: {_parent(d)}")
            dkind = self._kind(cur, d)
            if dkind == 1:
                lo, hi = _subtree_bounds(d)
                if skind == 0:
                    raise IsADirectory(f"is a directory: {d}")
                if cur.execute("SELECT 1 FROM entries WHERE path >= ? AND path < ? LIMIT 1", (lo, hi)).fetchone():
                    raise DirectoryNotEmpty(f"directory not empty: {d}")
            elif dkind == 0 and skind == 1:
                raise NotADirectory(f"not a directory: {d}")
            if dkind is not None:
                cur.execute("DELETE FROM entries WHERE path = ?", (d,))
                cur.execute("DELETE FROM chunks WHERE path = ?", (d,))
            if skind == 1:
                lo, hi = _subtree_bounds(s)
                n = len(s)
                cur.execute(
                    "UPDATE entries SET path = ? || substr(path, ?), parent = ? || substr(parent, ?) "
                    "WHERE path >= ? AND path < ?",
                    (d, n + 1, d, n + 1, lo, hi),
                )
                cur.execute(
                    "UPDATE chunks SET path = ? || substr(path, ?) WHERE path >= ? AND path < ?",
                    (d, n + 1, lo, hi),
                )
            cur.execute("UPDATE entries SET path = ?, parent = ?, mtime = ? WHERE path = ?", (d, _parent(d), now, s))
            cur.execute("UPDATE chunks SET path = ? WHERE path = ?", (d, s))

    def chmod(self, path: str, mode: int) -> None:
        p = normalize(path)
        with self._tx() as cur:
            cur.execute("UPDATE entries SET mode = ? WHERE path = ?", (int(mode) & 0o7777, p))
            if not cur.rowcount:
                raise NoSuchPath(f"no such file or directory: {p}")

    def set_mtime(self, path: str, mtime: float) -> None:
        """Set a path's modification time (used by `touch`)."""
        p = normalize(path)
        with self._tx() as cur:
            cur.execute("UPDATE entries SET mtime = ? WHERE path = ?", (float(mtime), p))
            if not cur.rowcount:
                raise NoSuchPath(f"no such file or directory: {p}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- extras -------------------------------------------------------------------------------

    def walk(self) -> list[tuple[str, bool, int]]:
        """Every entry as (path, is_dir, mode), sorted by path (parents before children)."""
        with self._read() as cur:
            rows = cur.execute("SELECT path, is_dir, mode FROM entries ORDER BY path").fetchall()
        return [(str(r[0]), bool(r[1]), int(r[2])) for r in rows]

    def meta_items(self) -> dict[str, str]:
        """All meta keys and values."""
        with self._read() as cur:
            return {str(k): str(v) for k, v in cur.execute("SELECT key, value FROM meta").fetchall()}

    def get_meta(self, key: str) -> str | None:
        """Value stored under `key` in the meta table, or None."""
        with self._read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key` (committed before returning)."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)),
            )

    def snapshot(self) -> bytes:
        """A consistent copy of the whole database as bytes (a SQLite database image)."""
        if self.path == ":memory:":
            with self._lock:
                return database_image(self._connection())
        if self._closed:
            raise VFSError("the filesystem is closed")
        # A separate connection (see the module docstring), to the file as it is: `mode=rw`
        # never creates one. A file removed under us (a shared vfsDir's cleanup) would otherwise
        # snapshot as an empty database, and that backup replace the instance's.
        try:
            src = sqlite3.connect(f"file:{quote(os.path.abspath(self.path))}?mode=rw", uri=True)
        except sqlite3.OperationalError as exc:
            raise VFSError(f"cannot snapshot {self.path}: {exc}") from None
        try:
            src.execute("PRAGMA busy_timeout=10000")
            return database_image(src)
        finally:
            src.close()

    def __enter__(self) -> SQLiteVFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"
