"""A VFS wrapper that reports every successful change, for the durable journal.

Why a module of its own: two processes record changes. In the worker, `regina.journal.JournalVFS`
queues each change for the next journal flush; in a tool process (`useProcesses`), the child's
VFS sends each change over its pipe, and the worker journals it like its own
(`regina/runtime/tools/child.py`). Both share this class, which imports nothing the tool
process's fork server would not preload (no Redis).

A change is `(op, args)` with JSON-able args: `write`/`append` (path, then the bytes as
`["u", text]` when they are UTF-8, else `["b", base64]`), `mkdir` (path, parents), `remove`
(path, recursive), `rename` (src, dst), `chmod` (path, mode), `set_mtime` (path, mtime).
"""

from __future__ import annotations

import base64
from typing import Any, cast

from regina.vfs.base import FileStat


def encode_bytes(data: bytes) -> list[str]:
    """File contents as JSON-able text: UTF-8 as it is, anything else base64."""
    try:
        return ["u", data.decode("utf-8")]
    except UnicodeDecodeError:
        return ["b", base64.b64encode(data).decode("ascii")]


def decode_bytes(kind: str, text: str) -> bytes:
    """The bytes `encode_bytes` turned into (kind, text)."""
    return text.encode("utf-8") if kind == "u" else base64.b64decode(text)


class RecordingVFS:
    """Passes everything to `inner` and calls `record(op, *args)` after each successful change.

    Before the first change (again after `touched` is reset: a backup made the file clean), the
    inner VFS's meta says `dirty`: a copy marked clean never holds a change the journal may lack
    (a kill between the change's commit and the mark would leave one)."""

    touched = False
    """Changed since the last clean point (attach or backup): the file is no longer a backup."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def record(self, op: str, *args: Any) -> int | None:
        """Note one change already made to `inner` (subclasses decide where it goes); the bytes
        the note now takes in this process's memory, when it stays there (a journal's)."""
        raise NotImplementedError

    def settle(self) -> None:
        """Bring `inner` up to date before it is used: a subclass may hold changes back
        (`JournalVFS.append_behind`). Every method here calls it first."""

    def mark_changing(self) -> None:
        """Mark the file no longer a backup (once per clean point), before a change is made to it:
        by this object, or by a tool process writing the same file."""
        if not self.touched:
            setter = getattr(self.inner, "set_meta", None)
            if setter is not None:
                setter("dirty", "1")
            self.touched = True

    # -- changes -------------------------------------------------------------------------------

    def write(self, path: str, data: bytes) -> None:
        self.settle()
        self.mark_changing()
        self.inner.write(path, data)
        self.record("write", path, *encode_bytes(data))

    def append(self, path: str, data: bytes) -> None:
        self.settle()
        self.mark_changing()
        self.inner.append(path, data)
        self.record("append", path, *encode_bytes(data))

    def mkdir(self, path: str, parents: bool = True) -> None:
        self.settle()
        self.mark_changing()
        self.inner.mkdir(path, parents=parents)
        self.record("mkdir", path, parents)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.settle()
        self.mark_changing()
        self.inner.remove(path, recursive=recursive)
        self.record("remove", path, recursive)

    def rename(self, src: str, dst: str) -> None:
        self.settle()
        self.mark_changing()
        self.inner.rename(src, dst)
        self.record("rename", src, dst)

    def chmod(self, path: str, mode: int) -> None:
        self.settle()
        self.mark_changing()
        self.inner.chmod(path, mode)
        self.record("chmod", path, int(mode))

    def set_mtime(self, path: str, mtime: float) -> None:
        self.settle()
        setter = getattr(self.inner, "set_mtime", None)
        if setter is not None:
            self.mark_changing()
            setter(path, mtime)
            self.record("set_mtime", path, float(mtime))

    # -- reads and the rest --------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        self.settle()
        return cast(bytes, self.inner.read(path))

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        self.settle()
        return cast(bytes, self.inner.read_range(path, offset, length))

    def exists(self, path: str) -> bool:
        self.settle()
        return bool(self.inner.exists(path))

    def stat(self, path: str) -> FileStat:
        self.settle()
        return cast(FileStat, self.inner.stat(path))

    def listdir(self, path: str) -> list[str]:
        self.settle()
        return cast(list[str], self.inner.listdir(path))

    def snapshot(self) -> bytes:
        self.settle()
        return cast(bytes, self.inner.snapshot())

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # park, walk, get_meta, set_meta, …
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)  # (copy and pickle probe these before `inner` is set)
        self.settle()
        return getattr(self.inner, name)
