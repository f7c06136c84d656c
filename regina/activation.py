"""What attaching an instance on a member takes: its VFS brought up to date (local copy, backup,
journal).

The state of an instance is its last backup plus the journal entries after it (regina/journal.py).
A local file is used as it is only when it is exactly a state the cluster knows: its `backupKey`
meta is the record's and it was not changed since (no `dirty` meta) — so a file a dead or cut-off
owner kept changing is never trusted. Otherwise the backup is restored (or, never backed up, the
VFS starts empty) and the journal entries after what the copy covers are replayed. A copy whose
meta cannot be read (a torn write, a disk error) is removed and restored the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from regina.backups import Backups
from regina.config import Settings
from regina.factory_hooks import FactoryHooks
from regina.instances import InstanceRecord
from regina.journal import Journal
from regina.runtime.session import Session
from regina.runtime.tools.runner import snapshot_pool
from regina.vfs import MemoryVFS, RealDirVFS, SQLiteVFS, open_vfs
from regina.vfs.snapshot import restore_snapshot_from
from regina.vfs.sqlite_files import create_parked, read_meta

log = logging.getLogger("regina.host")

AnyVFS = SQLiteVFS | MemoryVFS | RealDirVFS


@dataclass
class Opened:
    """The attached VFS and what it took to get there."""

    vfs: AnyVFS
    restored: bool
    journal_seq: int
    replayed_bytes: int


def local_path(settings: Settings, instance_id: str) -> str:
    """Where the sqlite backend keeps the instance's file."""
    return os.path.join(settings.vfs_dir, f"{instance_id}.sqlite")


def open_local(settings: Settings, instance_id: str) -> AnyVFS:
    """Open (creating) the instance's VFS with the configured backend."""
    s = settings
    return open_vfs(s.vfs_backend, instance_id, s.vfs_dir, s.fs_root_path, s.vfs_synchronous)


def open_new(settings: Settings, instance_id: str, meta: dict[str, str] | None = None) -> AnyVFS:
    """A new instance's VFS carrying `meta`: an sqlite one is written from an image and left
    parked (no SQLite connection or fsync until its first use)."""
    path = local_path(settings, instance_id)
    if settings.vfs_backend == "sqlite" and not os.path.exists(path):
        return create_parked(path, synchronous=settings.vfs_synchronous, meta=meta)
    vfs = open_local(settings, instance_id)
    for key, value in (meta or {}).items():
        vfs.set_meta(key, value)
    return vfs


def open_parked(settings: Settings, instance_id: str) -> AnyVFS:
    """The instance's local copy, opened parked when it is an sqlite file (first use connects)."""
    if settings.vfs_backend == "sqlite":
        return SQLiteVFS(local_path(settings, instance_id), synchronous=settings.vfs_synchronous, connect=False)
    return open_local(settings, instance_id)


def remove_local(settings: Settings, instance_id: str) -> None:
    """Delete the instance's local copy (SQLite file and WAL, or realdir directory)."""
    if settings.vfs_backend == "realdir" and settings.fs_root_path:
        root = realdir_root(settings, instance_id)
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(root + ".meta.json")
    for suffix in ("", "-wal", "-shm"):
        path = local_path(settings, instance_id) + suffix
        if os.path.exists(path):
            os.remove(path)


def realdir_root(settings: Settings, instance_id: str) -> str:
    """Where the realdir backend keeps the instance's files."""
    return os.path.join(settings.fs_root_path or "", instance_id)


def has_local(settings: Settings, instance_id: str) -> bool:
    if settings.vfs_backend == "sqlite":
        return os.path.exists(local_path(settings, instance_id))
    if settings.vfs_backend == "realdir":
        return os.path.isdir(realdir_root(settings, instance_id))
    return False  # a memory VFS has no copy outside its process


def _local_meta(settings: Settings, instance_id: str) -> dict[str, str] | None:
    """The backup meta of this member's own copy (None when it has none)."""
    if not has_local(settings, instance_id):
        return None
    if settings.vfs_backend == "sqlite":
        return read_meta(local_path(settings, instance_id))
    names = ("backupVersion", "backupKey", "journalSeq", "dirty")
    vfs = open_local(settings, instance_id)
    try:
        return {k: v for k in names if (v := vfs.get_meta(k)) is not None}
    finally:
        vfs.close()


def open_current(
    settings: Settings,
    hooks: FactoryHooks,
    backups: Backups | None,
    journal: Journal | None,
    rec: InstanceRecord,
    new: bool = False,
    meta: dict[str, str] | None = None,
) -> Opened:
    """Open the instance's VFS at the state the cluster holds for `rec`.

    With `storage.type` null (`backups` None) the local copy is all there is: restore only what a
    graceful suspend wrote, as before journaling existed. A `new` instance (its spawn) has no
    backup, journal or copy anywhere yet. `meta`: keys the opened copy must carry (written only
    where it does not already).
    """
    iid = rec.instance_id
    want = meta or {}
    if new:
        return Opened(open_new(settings, iid, want), False, 0, 0)
    try:
        local = _local_meta(settings, iid)
    except (sqlite3.DatabaseError, ValueError) as exc:
        if backups is None or journal is None:
            raise  # the copy is all there is: left for an operator to look at
        # Untrusted, and in the way of every attach (a resume prefers this member): rebuilt below.
        log.warning("instance %s: its local copy is unreadable (%r); removed, restoring from storage", iid, exc)
        remove_local(settings, iid)
        local = None
    if backups is None or journal is None:
        if local is None:
            return Opened(open_new(settings, iid, want), False, 0, 0)
        return Opened(_carrying(open_parked(settings, iid), local, want), False, 0, 0)
    meta = local
    trusted = (
        meta is not None
        and meta.get("dirty") != "1"
        and meta.get("backupKey", "") == rec.backup_key
        and int(meta.get("backupVersion") or 0) == rec.backup_version
    )
    restored = False
    after = int(meta.get("journalSeq") or 0) if trusted and meta is not None else rec.backup_seq
    snapshot: bytes | None = None
    if not trusted:
        if rec.backup_version > 0:
            restored, snapshot = _restore(settings, hooks, backups, rec)
            if not restored:
                log.warning("instance %s: backup version %d missing from storage", iid, rec.backup_version)
        if not restored:
            remove_local(settings, iid)  # an untrusted copy: rebuild from the journal alone
    vfs = _open_copy(settings, iid, snapshot, trusted and not restored)
    vfs = _carrying(vfs, meta if trusted and not restored else None, want)
    last, size = journal.replay(iid, vfs, after)  # writes the copy's journalSeq
    return Opened(vfs, restored or last != after, last, size)


def _restore(
    settings: Settings, hooks: FactoryHooks, backups: Backups, rec: InstanceRecord
) -> tuple[bool, bytes | None]:
    """Restore the backup `rec` names: (found, the image when a memory VFS is built from it).

    For an SQLite file or a realdir tree storage writes the backup to a file as it sends it
    (`Storage.get_into`), and the image is checked and read there: never whole in memory, where
    the storage allows. A factory's `restore` hook takes the bytes, and so does a memory VFS.
    """
    iid = rec.instance_id

    def fill(out: BinaryIO) -> bool:
        return backups.load_into(iid, rec.backup_version, rec.backup_key, out)

    if hooks.restore is None and settings.vfs_backend == "sqlite":
        return restore_snapshot_from(local_path(settings, iid), fill, blocking=_off_the_hub), None
    if hooks.restore is None and settings.vfs_backend == "realdir":
        return RealDirVFS.restore_from(realdir_root(settings, iid), fill, blocking=_off_the_hub), None
    data = backups.load(iid, rec.backup_version, rec.backup_key)
    if data is None:
        return False, None
    if hooks.restore is not None:
        hooks.restore(iid, data, settings)
        return True, None
    return True, data  # memory: built from it by the caller


def _off_the_hub(call: Callable[[], None]) -> None:  # a `Blocking` (regina/atomic_file.py)
    """Run a restore's long waits (its fsync and integrity check: ≈ 0.6 s per 100 MB here; a
    realdir tree's rebuild) in a real thread of the snapshot pool; the caller's greenlet waits
    without stopping the others."""
    snapshot_pool().submit(call).result()


def _open_copy(settings: Settings, iid: str, snapshot: bytes | None, clean: bool) -> AnyVFS:
    """The VFS from a memory snapshot, or the local copy: parked when it is a copy closed
    cleanly (`clean`: no need to connect yet), else opened."""
    if snapshot is not None:
        return MemoryVFS.from_snapshot(snapshot)
    return open_parked(settings, iid) if clean else open_local(settings, iid)


def _carrying(vfs: AnyVFS, has: dict[str, str] | None, want: dict[str, str]) -> AnyVFS:
    """`vfs` with the meta in `want`, written only where `has` (what it holds) differs."""
    if isinstance(vfs, MemoryVFS):
        return vfs
    for key, value in want.items():
        if (has or {}).get(key) != value:
            vfs.set_meta(key, value)
    return vfs


#: Usage of a terminal event that spent nothing.
ZERO = {"promptTokens": 0, "completionTokens": 0}


def answer_of(messages: list[dict[str, Any]], run_id: str) -> str | None:
    """The run's final answer when the transcript already ends with it (a redelivered run whose
    worker stopped between making its answer durable and publishing it): finish with it, do not
    ask the model again."""
    if not messages:
        return None
    last = messages[-1]
    if last.get("runId") == run_id and last.get("role") == "assistant" and not last.get("tool_calls"):
        return str(last.get("content") or "")
    return None


def local_messages(settings: Settings, instance_id: str) -> list[dict[str, Any]] | None:
    """The conversation in the instance's local copy (None when this member has none)."""
    if settings.vfs_backend == "memory" or (
        settings.vfs_backend == "sqlite" and not os.path.exists(local_path(settings, instance_id))
    ):
        return None
    vfs = open_local(settings, instance_id)
    try:
        return [dict(m) for m in Session(vfs).load()]
    finally:
        vfs.close()
