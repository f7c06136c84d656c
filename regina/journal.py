"""The durable journal: every VFS change of a started instance, in Redis before the client hears back.

Why: a worker's local VFS file dies with its disk. An instance's state is its last backup in
storage (by default the cluster's Redis) plus the journal `regina:journal:<id>` (a Redis LIST): one entry
per VFS change made since that backup (`write`, `append`, `mkdir`, `remove`, `rename`, `chmod`,
`set_mtime`), logical and incremental (an appended transcript line costs its own bytes, not the
file's). `JournalVFS` records the changes as they happen (a tool process's too: it reports them
over its pipe); the host ships them with one fenced script (`Journal.flush`) before a tool runs
(the tool-call ledger), after a step that ran tools and before a run's terminal event, so
whatever a client was told is in Redis. A new owner restores the backup and replays
the entries after the sequence number the backup covers (`backupSeq`). A backup (suspend, or a
checkpoint once the journal passes `storage.checkpointBytes`) drops the entries it covers.

Entry format: `"<seq> <json [epoch, op, args…]>"`; bytes are sent as UTF-8 text when they are,
else base64. Sequence numbers continue across owners (the record's `journalSeq`).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, cast

import redis

from regina import keys
from regina.errors import StaleEpoch, VFSError
from regina.fencing import is_stale_error
from regina.vfs.recording import RecordingVFS, decode_bytes, encode_bytes

log = logging.getLogger("regina.journal")

#: `written_bytes` of a file that must be backed up at the step's end whatever it wrote.
MUST_CHECKPOINT = 1 << 62

# KEYS: instance record, journal[, run record]. ARGV: epoch, last seq, the run's progress ('' =
# none), entries…  Appends the entries and records the last seq, only while the epoch is current
# (else error STALE, nothing written). With a progress (`RunProgress.encode`: steps and tokens of
# the run's completed model calls) it goes in the running run's record (`spent`) in the same
# write as the step it belongs to: a redelivered attempt goes on from it (regina/step.py).
_FLUSH = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return redis.error_reply('STALE') end
if #ARGV > 3 then
  for i = 4, #ARGV, 1000 do  -- unpack fails past ~8000 values
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('HSET', KEYS[1], 'journalSeq', ARGV[2])
end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], 'status') == 'running' then
  redis.call('HSET', KEYS[3], 'spent', ARGV[3])
end
return 1
"""


def parse(entry: str) -> tuple[int, list[Any]]:
    """(seq, [epoch, op, args…]) of one stored entry."""
    seq, _, body = entry.partition(" ")
    return int(seq), cast(list[Any], json.loads(body))


def apply(vfs: Any, op: str, args: list[Any]) -> None:
    """Replay one recorded change on `vfs` (a plain VFS, not a JournalVFS)."""
    if op == "write":
        vfs.write(args[0], decode_bytes(args[1], args[2]))
    elif op == "append":
        vfs.append(args[0], decode_bytes(args[1], args[2]))
    elif op == "mkdir":
        vfs.mkdir(args[0], parents=bool(args[1]))
    elif op == "remove":
        vfs.remove(args[0], recursive=bool(args[1]))
    elif op == "rename":
        vfs.rename(args[0], args[1])
    elif op == "chmod":
        vfs.chmod(args[0], int(args[1]))
    elif op == "set_mtime":
        setter = getattr(vfs, "set_mtime", None)
        if setter is not None:
            setter(args[0], float(args[1]))
    else:
        raise ValueError(f"unknown journal op {op!r}")


class JournalVFS(RecordingVFS):
    """A VFS that records every successful change for the journal (reads pass through).

    `record` is also how the worker journals what an instance's tool process changed
    (`useProcesses`: the child reports each change over its pipe)."""

    def __init__(self, inner: Any, epoch: int, seq: int) -> None:
        super().__init__(inner)
        self.epoch = epoch
        self.seq = seq  # last seq assigned (flushed or pending)
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.written_bytes = 0  # since attach: drives checkpoints
        self._behind: list[tuple[str, bytes]] = []  # appends journaled, not made yet (`append_behind`)
        # Taken to make them: a tool's thread (one abandoned by its call, still reading) may use
        # the file while the step catches up. Patched under gevent, like the SQLite VFS's own lock.
        self._behind_lock = threading.RLock()

    def record(self, op: str, *args: Any) -> int:
        """Keep the change's entry until the next flush; its size (a tool process's runner stops
        a call whose reported changes hold too much here: `ProcessRunner.max_call_changes`)."""
        size = self._journal(op, *args)
        self.mark_changing()  # a tool process's change (reported after it was made) marks it too
        return size

    def _journal(self, op: str, *args: Any) -> int:
        self.seq += 1
        entry = f"{self.seq} " + json.dumps([self.epoch, op, *args], separators=(",", ":"))
        self.pending.append(entry)
        self.pending_bytes += len(entry)
        self.written_bytes += len(entry)
        return len(entry)

    def append_behind(self, path: str, data: bytes) -> None:
        """Journal an append now and make it on the local file later: at `settle`, which
        whatever touches the file next does first (so the file is only ever late, never out of
        order). Why: a run's answer is durable once its entry is in Redis, which the run's
        finish script ships; the local commit (≈ 0.1 ms, 0.5 ms at `vfsSynchronous` FULL, more
        at its tail) then need not delay the client. Killed before that, the copy is
        rebuilt from its backup and the journal (regina/activation.py), as after any kill."""
        self._journal("append", path, *encode_bytes(data))
        self._behind.append((path, data))

    def settle(self) -> None:
        """Make the appends `append_behind` left for later, in order (every use of the file
        through this object does first). A failure (the disk full) raises and leaves the rest
        for the next try: until then every use of the file raises, and its backup fails,
        instead of going on without them."""
        if not self._behind:
            return
        with self._behind_lock:
            while self._behind:
                self.mark_changing()  # before the change, as every change does
                path, data = self._behind[0]
                self.inner.append(path, data)
                del self._behind[0]

    def close(self) -> None:
        try:
            self.settle()
        except Exception as exc:  # noqa: BLE001 - the journal holds them; the copy is marked dirty
            log.warning("a local copy closed with appends unmade (it is rebuilt at its next attach): %r", exc)
        self.inner.close()

    def must_checkpoint(self) -> None:
        """Back the file up at the end of this step (the checkpoint's own threshold regardless):
        a tool process ended before it could report every change it made (killed, out of
        memory, timed out), so the file may hold a change no journal entry has, and a later entry
        building on it (the rename of a file it wrote) could not be replayed elsewhere."""
        self.written_bytes = max(self.written_bytes, MUST_CHECKPOINT)

    def take(self) -> list[str]:
        """The entries not flushed yet (the caller ships them; on failure nothing is retried)."""
        out, self.pending, self.pending_bytes = self.pending, [], 0
        return out

    def ship(self) -> tuple[int, list[str]]:
        """(last seq, pending entries), taken: a run's terminal script ships them (runs/stream.py)."""
        return self.seq, self.take()

    def give_back(self, entries: list[str]) -> None:
        """Entries whose shipping failed go back in front (shipped with the next flush)."""
        self.pending[:0] = entries


class Journal:
    """Ship and read one cluster's journal entries."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._flush = client.register_script(_FLUSH)

    def flush(self, instance_id: str, epoch: int, vfs: JournalVFS, progress: tuple[str, str] | None = None) -> None:
        """Append the VFS's pending entries, only while `epoch` owns the instance; `progress`:
        (run id, `RunProgress.encode()`) to record on that running run in the same write.

        With nothing pending it is a plain fence check. Raises StaleEpoch when the epoch moved on.
        """
        entries = vfs.take()
        flush_keys = [keys.instance_record(instance_id), keys.journal(instance_id)]
        if progress is not None:
            flush_keys.append(keys.run_record(progress[0]))
        try:
            self._flush(keys=flush_keys, args=[epoch, vfs.seq, progress[1] if progress else "", *entries])
        except redis.ResponseError as exc:
            if is_stale_error(exc):
                raise StaleEpoch(f"instance {instance_id}: journal write from stale epoch {epoch} refused") from exc
            vfs.pending[:0] = entries
            raise
        except redis.RedisError:
            vfs.pending[:0] = entries  # shipped with the next flush
            raise

    def entries(self, instance_id: str) -> list[str]:
        """Every stored entry, oldest first."""
        return cast(list[str], self.r.lrange(keys.journal(instance_id), 0, -1))

    def replay(self, instance_id: str, vfs: Any, after: int) -> tuple[int, int]:
        """Apply the entries with seq > `after` to `vfs`, each seq once; (last seq applied, bytes
        applied). Seqs only grow, but a flush can be stored twice: redis-py sends a command again
        when its connection drops before the reply, and the first may have run (an append
        applied twice would double its bytes).

        A local copy (`set_meta`) is marked dirty before the first entry and gets the last seq
        and its clean mark back after the last: a process killed halfway leaves a copy the next
        attach does not trust (it would replay from `after` again over entries applied already:
        a turn twice, or a rename whose source is gone)."""
        last, size = after, 0
        setter = getattr(vfs, "set_meta", None)
        for entry in self.entries(instance_id):
            seq, body = parse(entry)
            if seq <= last:
                continue
            if setter is not None and last == after:
                setter("dirty", "1")
            try:
                apply(vfs, str(body[1]), body[2:])
            except VFSError as exc:
                # A change a tool process made and could not report (`JournalVFS.must_checkpoint`:
                # its worker died before the backup that would hold it) is in no entry: an entry
                # building on it cannot apply. Refusing it would leave the instance unattachable.
                log.warning("instance %s: journal entry %d (%s) skipped: %s", instance_id, seq, body[1], exc)
            last, size = seq, size + len(entry)
        if setter is not None and last != after:
            setter("journalSeq", str(last))
            setter("dirty", "0")
        return last, size
