"""The one interface every storage adapter implements (the adapters live in `storage/`).

The core owns the protocol and the adapters implement it, so the core never imports an adapter.

Backups of suspended instances are opaque blobs under string keys such as
"instances/<instanceId>/vfs". Adapters must be safe to call from several greenlets/threads.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol, runtime_checkable


@runtime_checkable
class Storage(Protocol):
    """Blob storage for instance backups: fs, S3 or Redis."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any previous value atomically."""
        ...

    def get(self, key: str) -> bytes | None:
        """Return the bytes stored under `key`, or None when there are none."""
        ...

    def get_into(self, key: str, out: BinaryIO) -> bool:
        """Write the bytes stored under `key` into `out` (a file open for writing), in pieces
        where the backend can send them so: a restore streams a large backup to disk instead
        of holding it whole. False, with nothing written, when there are none."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; no error when it does not exist."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Return every stored key that starts with `prefix`, sorted."""
        ...

    def close(self) -> None:
        """Release connections and clients."""
        ...
