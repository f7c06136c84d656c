"""SQLite VFS files without opening them as a VFS: a new one written from an image built in
memory, and the meta table of one read on its own (what spawn and resume need, and no more).

Creating a VFS file through SQLite costs a connection, the switch to WAL, a first checkpoint
and the fsyncs they bring (≈ 5 ms a spawn on this project's disks, most of a spawn's time); an
instance that is spawned and never used needs none of that.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import struct
import time

from regina.vfs.snapshot import create_schema
from regina.vfs.sqlite import SQLiteVFS

__all__ = ["create_parked", "empty_image", "read_meta"]


#: The root directory's mtime in a template image: a value with a fraction, so SQLite stores it as
#: an 8-byte big-endian float (never as an integer) that occurs once in the image.
_TEMPLATE_MTIME = 1_000_000_000.123456789
_TEMPLATE_MTIME_BYTES = struct.pack(">d", _TEMPLATE_MTIME)


@functools.lru_cache(maxsize=16)
def _template(meta: tuple[tuple[str, str], ...]) -> tuple[bytes, int]:
    """An empty image holding `meta`, and where its root directory's mtime is (built once per
    meta: a worker's spawns all carry the same member id)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        cur = conn.cursor()
        cur.execute("BEGIN")
        create_schema(cur, root_mtime=_TEMPLATE_MTIME)
        cur.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta))
        cur.execute("COMMIT")
        image = conn.serialize()
    finally:
        conn.close()
    at = image.find(_TEMPLATE_MTIME_BYTES)
    if at < 0 or image.find(_TEMPLATE_MTIME_BYTES, at + 1) >= 0:
        raise RuntimeError("the template image's root mtime is not found exactly once")
    # Header bytes 18-19 = 2 mark a WAL database: the file opens in WAL mode with no -wal file.
    return image[:18] + b"\x02\x02" + image[20:], at


def empty_image(meta: dict[str, str] | None = None) -> bytes:
    """The bytes of a new, empty VFS database in WAL mode holding `meta`, its root directory
    modified now: a template built once per meta, with the mtime's 8 bytes written in (SQLite
    pages carry no checksum; ≈ 0.2 ms per spawn less than building it)."""
    image, at = _template(tuple(sorted((meta or {}).items())))
    return image[:at] + struct.pack(">d", time.time()) + image[at + 8 :]


def create_parked(path: str, *, synchronous: str = "FULL", meta: dict[str, str] | None = None) -> SQLiteVFS:
    """A new, empty VFS file at `path` holding `meta`, parked (no connection until its first use).

    The file is fsynced only at `synchronous` FULL or EXTRA, the levels that promise to survive
    a power loss; at NORMAL a new instance's file is as durable as its first commits.
    """
    level = synchronous.upper()
    vfs = SQLiteVFS(path, synchronous=level, connect=False)  # checks the level, makes the directory
    with open(path, "wb") as f:
        f.write(empty_image(meta))
        if level in ("FULL", "EXTRA"):
            f.flush()
            os.fsync(f.fileno())
    return vfs


def read_meta(path: str) -> dict[str, str]:
    """The meta table of a VFS file no one holds open (no schema check, no write)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}
    finally:
        conn.close()
