"""VFS backups in storage, versioned so a stale owner's write can never become the latest (SPEC §6, §7).

Each backup goes to a key of its own, `instances/<id>/vfs.<epoch>.<version>`, and only then
does one fenced Lua script make the instance record point at it (`backupKey`, `backupVersion`).
A worker that lost the instance meanwhile may still finish its `put`, but its record update is
refused, it deletes the blob it wrote, and nothing ever reads it: readers follow the record.
Two owners never share a key because the epoch is part of it. After each commit every blob of
the instance older than the committed one is deleted (best effort, so what a failed delete or a
worker killed between its put and its commit left goes at the next commit). Records written
before versioned keys point at the legacy key `instances/<id>/vfs` (no `backupKey` field).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import redis

from regina import keys
from regina.errors import StaleEpoch
from regina.fencing import is_stale_error
from regina.storage import Storage

log = logging.getLogger("regina.backups")

# KEYS: instance record, journal list. ARGV: epoch, version, key, bytes, journal seq covered.
# Points the record at the new backup and drops the journal entries the snapshot already holds.
# Run again after its reply was lost (redis-py sends it once more), it answers the same: the
# record naming this call's key (unique per epoch and version) means it ran — even if the epoch
# has moved on since.
_COMMIT = """
if redis.call('HGET', KEYS[1], 'backupKey') == ARGV[3] then return 1 end
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
redis.call('HSET', KEYS[1], 'backupVersion', ARGV[2], 'backupKey', ARGV[3], 'vfsBytes', ARGV[4],
  'backupSeq', ARGV[5])
local covered = tonumber(ARGV[5])
while true do
  local head = redis.call('LINDEX', KEYS[2], 0)
  if not head then break end
  local seq = tonumber(string.match(head, '^(%d+) '))
  if not seq or seq > covered then break end
  redis.call('LPOP', KEYS[2])
end
return 1
"""


@dataclass(frozen=True)
class Snapshot:
    """The bytes of one backup, taken and not yet stored (`Backups.snapshot_vfs`)."""

    instance_id: str
    epoch: int
    version: int
    key: str
    data: bytes
    journal_seq: int
    #: The journal bytes written since the previous backup that this one covers (a VFS's
    #: `written_bytes`, reset by the snapshot): given back when it is not stored.
    written: int = 0


def instance_prefix(instance_id: str) -> str:
    """Storage prefix of every backup an instance has (for delete)."""
    return f"instances/{instance_id}/"


def legacy_key(instance_id: str) -> str:
    """The unversioned key records without `backupKey` point at."""
    return f"instances/{instance_id}/vfs"


def backup_key(instance_id: str, epoch: int, version: int) -> str:
    """The key of one backup: unique per owner (epoch) and per backup (version)."""
    return f"instances/{instance_id}/vfs.{epoch}.{version}"


_VERSIONED = re.compile(r"vfs\.(\d+)\.(\d+)")


def key_age(instance_id: str, name: str) -> tuple[int, int] | None:
    """(epoch, version) of one of the instance's backup keys, (-1, -1) for the legacy key (older
    than any versioned one), None for a name that is no backup key."""
    rest = name.removeprefix(instance_prefix(instance_id))
    if rest == "vfs":
        return (-1, -1)
    match = _VERSIONED.fullmatch(rest)
    return (int(match[1]), int(match[2])) if match else None


def current_key(instance_id: str, version: int, key: str) -> str | None:
    """The key the record points at (None when the instance was never backed up)."""
    if key:
        return key
    return legacy_key(instance_id) if version > 0 else None


class Backups:
    """Put, commit, read and delete the backups of instances in one storage."""

    def __init__(self, client: redis.Redis, storage: Storage) -> None:
        self.storage = storage
        self._client = client
        self._commit = client.register_script(_COMMIT)

    def save(
        self, instance_id: str, epoch: int, version: int, snapshot: Callable[[], bytes], journal_seq: int = 0
    ) -> int:
        """Snapshot, put under a fresh key and point the record at it; returns its size.

        Raises StaleEpoch (after deleting the blob it wrote) when the epoch moved on.
        """
        key = backup_key(instance_id, epoch, version)
        return self.store(Snapshot(instance_id, epoch, version, key, snapshot(), journal_seq))

    def store(self, snap: Snapshot) -> int:
        """Put a snapshot under its key and point the record at it (fenced); returns its size.

        Touches no VFS: a checkpoint runs this after letting go of the instance's step lock
        (regina/host.py), so the next step does not wait for storage. The commit only trims the
        journal entries up to the snapshot's seq; later ones stay for the next backup.
        Raises StaleEpoch (after deleting the blob it wrote) when the epoch moved on.
        """
        instance_id, key = snap.instance_id, snap.key
        self.storage.put(key, snap.data)
        try:
            self._commit(
                keys=[keys.instance_record(instance_id), keys.journal(instance_id)],
                args=[snap.epoch, snap.version, key, len(snap.data), snap.journal_seq],
            )
        except redis.ResponseError as exc:
            if not is_stale_error(exc):
                raise
            self.storage.delete(key)  # never referenced: a stale owner's backup goes away
            raise StaleEpoch(f"instance {instance_id}: backup from stale epoch {snap.epoch} discarded") from exc
        self._remove_older(snap)
        return len(snap.data)

    def _remove_older(self, snap: Snapshot) -> None:
        """Delete every backup of the instance older than the one just committed: the one it
        replaced and what earlier failures left (each a full copy). Older only: once this commit
        set the record, no older key can be committed again (the commit is fenced by the epoch,
        and one owner stores one backup at a time), while a newer owner may have committed or be
        putting a key meanwhile. Best effort: what fails is tried again at the next commit."""
        mine = (snap.epoch, snap.version)
        try:
            for name in self.storage.list(instance_prefix(snap.instance_id)):
                age = key_age(snap.instance_id, name)
                if age is not None and age < mine:
                    self.storage.delete(name)
        except Exception:  # noqa: BLE001 - the next commit of the instance tries again
            log.warning("instance %s: could not delete its older backups", snap.instance_id, exc_info=True)

    def snapshot_vfs(
        self, instance_id: str, epoch: int, version: int, vfs: Any, custom: Callable[[], bytes] | None = None
    ) -> Snapshot:
        """Take the bytes a backup of an open VFS stores (or what a factory `backup` hook returns).

        The snapshot's meta names the backup and the journal seq it covers, and says it is clean:
        a later attach on this disk can then use the file without downloading it. From here the
        VFS counts as clean (`touched` reset): its next change marks the file dirty again, so a
        file changed after the snapshot is never taken for it. A snapshot that fails marks the
        file dirty.
        """
        key = backup_key(instance_id, epoch, version)
        seq = int(getattr(vfs, "seq", 0))
        setter = getattr(vfs, "set_meta", None)
        if setter is not None:
            setter("backupVersion", str(version))
            setter("backupKey", key)
            setter("journalSeq", str(seq))
            setter("dirty", "0")
        try:
            data = (custom or vfs.snapshot)()
        except BaseException:
            if setter is not None:
                setter("dirty", "1")
            raise
        written = int(getattr(vfs, "written_bytes", 0))
        if hasattr(vfs, "written_bytes"):
            vfs.written_bytes = 0
            vfs.touched = False
        return Snapshot(instance_id, epoch, version, key, data, seq, written)

    def save_vfs(
        self, instance_id: str, epoch: int, version: int, vfs: Any, custom: Callable[[], bytes] | None = None
    ) -> tuple[int, int]:
        """Back up an open VFS (`snapshot_vfs`, then `store`); (size, version).

        If the save is refused the file is marked dirty again, so it is never taken for a backup
        the cluster has.
        """
        snap = self.snapshot_vfs(instance_id, epoch, version, vfs, custom)
        try:
            size = self.store(snap)
        except BaseException:
            setter = getattr(vfs, "set_meta", None)
            if setter is not None:
                setter("dirty", "1")
            if hasattr(vfs, "written_bytes"):
                vfs.written_bytes += snap.written  # not backed up: the journal still counts
            raise
        return size, version

    def load(self, instance_id: str, version: int, key: str) -> bytes | None:
        """The backup the record points at (None when there is none or it is missing)."""
        name = current_key(instance_id, version, key)
        return None if name is None else self.storage.get(name)

    def load_into(self, instance_id: str, version: int, key: str, out: BinaryIO) -> bool:
        """`load`, written into `out` as storage sends it (a restore's file: never whole in
        memory where the storage allows); False, with nothing written, as `load`'s None."""
        name = current_key(instance_id, version, key)
        return name is not None and self.storage.get_into(name, out)

    def delete_all(self, instance_id: str) -> None:
        """Remove every backup of the instance, the one its record names last: a delete that
        fails midway (storage down) leaves the instance whole, and can be sent again."""
        record = keys.instance_record(instance_id)
        key, version = cast(list[str | None], self._client.hmget(record, "backupKey", "backupVersion"))
        current = current_key(instance_id, int(version or 0), key or "")
        names = [n for n in self.storage.list(instance_prefix(instance_id)) if n != current]
        for name in sorted(names, key=lambda n: key_age(instance_id, n) or (-2, -2)):
            self.storage.delete(name)
        if current is not None:
            self.storage.delete(current)
