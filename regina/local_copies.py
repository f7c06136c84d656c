"""Remove the local VFS copies nobody may use: at a worker's start, when it is back after being
taken for dead, and when it lets go of an instance (regina/host.py).

A worker killed (or restarted) keeps its instances' files on its disk. DELETE asks every live
member to drop its own copy, but a process that was down then, or the next process on the same
disk, would keep a deleted instance's files for good (a privacy problem, issue 15); a worker
paused or cut off past `memberTtl` keeps the copies of the instances that moved meanwhile (the
old conversation, for as long as it runs). So a worker removes, in `vfsDir` (and `fsRootPath`
for realdir):

- the copies of instances that no longer exist (whichever process wrote them);
- the copies this member (this process or an earlier one under its id) wrote (each attach
  records the member in the copy's meta) of instances another member owns now: the cluster's
  state is that member's plus storage, so this copy is stale.

Copies another member wrote (a `vfsDir` shared by several workers) are left alone unless their
instance is gone, and so are this member's copies of the instances it still owns (a resume
prefers the member that holds the file).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import cast

import redis

from regina import activation, ids, keys
from regina.config import Settings

log = logging.getLogger("regina.host")

#: The meta key naming the member that last attached a local copy.
MEMBER_META = "member"


def _local_ids(settings: Settings) -> set[str]:
    """Instance ids with a copy in this member's vfsDir (or realdir root)."""
    found: set[str] = set()
    if os.path.isdir(settings.vfs_dir):
        for name in os.listdir(settings.vfs_dir):
            stem = name.split(".sqlite", 1)[0]
            if name.startswith(stem + ".sqlite") and ids.is_valid_instance_id(stem):
                found.add(stem)
    root = settings.fs_root_path
    if settings.vfs_backend == "realdir" and root and os.path.isdir(root):
        found |= {n for n in os.listdir(root) if ids.is_valid_instance_id(n) and os.path.isdir(os.path.join(root, n))}
    return found


def _written_by(settings: Settings, instance_id: str) -> str | None:
    vfs = activation.open_local(settings, instance_id)
    try:
        return vfs.get_meta(MEMBER_META)
    finally:
        vfs.close()


#: Seconds after which a restore's temp file or directory is a leftover (its process died): a
#: live restore (another worker sharing `vfsDir`) writes and renames its own within seconds.
LEFTOVER_AGE = 600.0


def remove_leftovers(settings: Settings, now: float | None = None) -> int:
    """Remove what restores killed midway left in `vfsDir` (`.restore-*.sqlite`) and the realdir
    root (`.restore-*`, `.old-*` directories), older than LEFTOVER_AGE; how many went."""
    now = time.time() if now is None else now
    removed = 0
    places: list[tuple[str, tuple[str, ...]]] = [(settings.vfs_dir, (".restore-",))]
    if settings.vfs_backend == "realdir" and settings.fs_root_path:
        places.append((settings.fs_root_path, (".restore-", ".old-")))
    for place, prefixes in places:
        if not os.path.isdir(place):
            continue
        for name in os.listdir(place):
            path = os.path.join(place, name)
            try:
                if not name.startswith(prefixes) or now - os.lstat(path).st_mtime < LEFTOVER_AGE:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            except OSError:
                continue  # gone meanwhile, or not ours to remove: the next start tries again
            removed += 1
    if removed:
        log.warning("removed %d leftover(s) of restores cut short in %s", removed, settings.vfs_dir)
    return removed


def remove_if_stale(settings: Settings, member_id: str, instance_id: str, owner: str | None) -> bool:
    """Remove this member's copy of `instance_id` if it is one described above, given the
    record's `owner` (None: no record); True if it went. Raises what reading the copy raises."""
    if owner == member_id:
        return False  # still ours: a resume here uses the copy
    if not activation.has_local(settings, instance_id):
        return False  # none here (opening one to read its meta would make an empty file)
    if owner is not None and _written_by(settings, instance_id) != member_id:
        return False  # another member's copy (a shared vfsDir): left to it
    activation.remove_local(settings, instance_id)
    return True


def remove_stale_copies(
    client: redis.Redis, settings: Settings, member_id: str, held: Callable[[str], bool] = lambda _iid: False
) -> int:
    """Remove the local copies described above (and restores' leftovers); returns how many
    instances' copies went. `held`: instances this process has attached or is attaching, left
    alone (a running member lets go of them itself: regina/host.py)."""
    if settings.vfs_backend == "memory":
        return 0
    remove_leftovers(settings)
    local = sorted(_local_ids(settings))
    if not local:
        return 0
    pipe = client.pipeline(transaction=False)
    for iid in local:
        pipe.hget(keys.instance_record(iid), "member")
    owners = cast(list[str | None], pipe.execute())
    removed = 0
    for iid, owner in zip(local, owners, strict=True):
        if held(iid):  # checked after the read: an attach may have begun meanwhile
            continue
        try:
            removed += remove_if_stale(settings, member_id, iid, owner)
        except Exception as exc:  # noqa: BLE001 - a damaged file must not keep the worker from joining
            log.warning("member %s: could not read the local copy of %s (left as it is): %r", member_id, iid, exc)
    if removed:
        log.warning("member %s: removed %d local VFS copies of deleted or moved instances", member_id, removed)
    return removed
