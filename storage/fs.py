"""Backups as files under one directory, written atomically so a crash never leaves half a blob."""

from __future__ import annotations

import builtins
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from regina.atomic_file import write_atomic
from regina.errors import StorageError

#: Suffix of in-flight temp files; `list` skips them and `put` refuses keys that end with it.
TEMP_SUFFIX = ".regina-tmp"

#: Bytes `get_into` reads and writes at a time.
COPY_CHUNK = 1 << 20


class FsStorage:
    """Blob storage on a local or shared filesystem; a key's "/" segments become directories."""

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self.base_path = Path(base_path).resolve()
        try:
            self.base_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"fs storage: cannot create base path {str(self.base_path)!r}: {exc}") from exc

    def _path(self, key: str) -> Path:
        """Map `key` to a file under base_path, refusing keys that would land anywhere else."""
        parts = PurePosixPath(key).parts if key else ()
        bad = (
            not parts
            or key.startswith("/")
            or "\x00" in key
            or key.endswith(TEMP_SUFFIX)
            or any(p in ("", ".", "..") for p in key.split("/"))
        )
        if bad:
            raise StorageError(f"fs storage: invalid key {key!r} (relative, no '.'/'..'/empty segments)")
        path = self.base_path.joinpath(*parts)
        # A symlink inside base_path could still point outside it; check where the path really is.
        if not path.resolve().is_relative_to(self.base_path):
            raise StorageError(f"fs storage: key {key!r} escapes the base path")
        return path

    def put(self, key: str, data: bytes) -> None:
        """Write to a temp file in the target dir, fsync, then os.replace: readers see old or new."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        except OSError as exc:
            raise StorageError(f"fs storage: cannot write key {key!r}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        """Read the whole file; a missing file means no backup."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"fs storage: cannot read key {key!r}: {exc}") from exc

    def get_into(self, key: str, out: BinaryIO) -> bool:
        """Copy the file into `out` a piece at a time (COPY_CHUNK); a missing file means no
        backup. An error writing `out` (the local disk) is raised as it is, not as storage's."""
        path = self._path(key)
        try:
            src = path.open("rb")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"fs storage: cannot read key {key!r}: {exc}") from exc
        with src:
            shutil.copyfileobj(src, out, COPY_CHUNK)
        return True

    def delete(self, key: str) -> None:
        """Unlink the file, then tidy its directory: temp files of puts killed midway (older
        than STALE_TEMP_AGE) go, and so does the directory once empty (an instance's last
        backup deleted)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"fs storage: cannot delete key {key!r}: {exc}") from exc
        _tidy(path.parent, self.base_path)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Walk from the deepest directory the prefix names, skipping temp files."""
        start = self.base_path
        head = prefix.rpartition("/")[0]
        if head:
            try:
                start = self._path(head)
            except StorageError:
                return []  # no stored key can contain an invalid segment
        keys: builtins.list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start, onerror=_raise):
            rel = Path(dirpath).relative_to(self.base_path).as_posix()
            for name in filenames:
                if name.endswith(TEMP_SUFFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own file."""


#: Seconds after which a temp file is a leftover of a put whose process died (a live put
#: writes and renames its own within seconds).
STALE_TEMP_AGE = 600.0


def _tidy(directory: Path, base: Path) -> None:
    """Remove stale temp files in `directory`, and the directory when nothing is left in it."""
    now = time.time()
    try:
        for entry in os.scandir(directory):
            if entry.name.endswith(TEMP_SUFFIX) and now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE:
                os.remove(entry.path)
        if directory != base:
            directory.rmdir()  # fails (and is left) while anything is in it
    except OSError:
        pass  # another put is writing there, or it is gone already


def _raise(exc: OSError) -> None:
    """Let os.walk report unreadable directories instead of silently skipping them."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return  # the prefix's directory does not exist (yet), or is a key: nothing under it
    raise StorageError(f"fs storage: cannot list {exc.filename!r}: {exc}") from exc
