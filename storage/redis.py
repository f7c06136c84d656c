"""Backups as fields of Redis hashes, one hash per instance (the first two parts of a key): no
extra service when the cluster's Redis has room, and listing or deleting one instance's backups
costs that instance only (one hash for everything made every DELETE read every instance's key
names)."""

from __future__ import annotations

import builtins
from typing import BinaryIO

import redis

from regina import keys
from regina.errors import StorageError

#: Name of the hash of keys with no folder (and of every key written before the hashes were split).
HASH_NAME = keys.STORAGE_HASH


class RedisStorage:
    """Blob storage in Redis: `instances/<id>/vfs.3.7` is field `vfs.3.7` of the hash
    `<prefix>regina:storage:instances/<id>`; a key of fewer than three parts is a field of
    `<prefix>regina:storage`."""

    def __init__(self, url: str, prefix: str = "") -> None:
        self.hash_name = prefix + HASH_NAME
        # Bytes in, bytes out: blobs are binary, so no decode_responses. The client's connection
        # pool makes it safe to share between threads.
        self._client = redis.Redis.from_url(url)

    def _place(self, key: str) -> tuple[str, str]:
        """(hash, field) of a key: its first two parts pick the hash."""
        parts = key.split("/", 2)
        if len(parts) < 3:
            return self.hash_name, key
        return keys.storage_folder(self.hash_name, f"{parts[0]}/{parts[1]}"), parts[2]

    def put(self, key: str, data: bytes) -> None:
        """HSET replaces the field in one command, so readers see the old or the new blob."""
        try:
            self._client.hset(*self._place(key), data)
        except redis.RedisError as exc:
            raise self._error("put", key, exc) from exc

    def get(self, key: str) -> bytes | None:
        """HGET; a missing field means no backup (also looked for where it was written before
        the hashes were split)."""
        try:
            value = self._client.hget(*self._place(key))
            if value is None and "/" in key:
                value = self._client.hget(self.hash_name, key)
        except redis.RedisError as exc:
            raise self._error("get", key, exc) from exc
        assert value is None or isinstance(value, bytes)  # sync client, no decode_responses
        return value

    def get_into(self, key: str, out: BinaryIO) -> bool:
        """`get`, written to `out`: Redis sends a field's value in one reply (there is no ranged
        read of a hash field), so the client holds it whole (about twice its size at its peak:
        its read buffer and the bytes) before it is written; nothing more is copied."""
        value = self.get(key)
        if value is None:
            return False
        out.write(value)
        return True

    def delete(self, key: str) -> None:
        """HDEL, which is a no-op for a missing field (also where it was written before)."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.hdel(*self._place(key))
                if "/" in key:
                    pipe.hdel(self.hash_name, key)
                pipe.execute()
        except redis.RedisError as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Under one instance (`instances/<id>/…`) one HKEYS of its hash; a shorter prefix scans
        the hash names. Keys of the hash of short keys come along when they match."""
        try:
            parts = prefix.split("/", 2)
            if len(parts) == 3:
                folder = f"{parts[0]}/{parts[1]}"
                names = [f"{folder}/{f}" for f in self._fields(keys.storage_folder(self.hash_name, folder))]
            else:
                names = self._scan()
            names += self._fields(self.hash_name)
        except redis.RedisError as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted({n for n in names if n.startswith(prefix)})

    def _scan(self) -> builtins.list[str]:
        """Every key of every instance hash (SCAN over the hash names)."""
        base = keys.storage_folder(self.hash_name, "")
        found = []
        for raw in self._client.scan_iter(match=_glob_escape(base) + "*", count=1000):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            found += [f"{name[len(base) :]}/{field}" for field in self._fields(name)]
        return found

    def _fields(self, hash_name: str) -> builtins.list[str]:
        """HKEYS: HSCAN would also send every blob (NOVALUES needs Redis 7.4)."""
        fields = self._client.hkeys(hash_name)
        assert isinstance(fields, builtins.list)  # sync client
        return [f.decode() if isinstance(f, bytes) else str(f) for f in fields]

    def close(self) -> None:
        """Disconnect the client's connection pool."""
        self._client.close()

    def _error(self, op: str, key: str, exc: Exception) -> StorageError:
        """Name the operation, hash and key so the log line says what failed where."""
        return StorageError(f"redis storage: {op} {key!r} in hash {self.hash_name!r} failed: {exc}")


def _glob_escape(text: str) -> str:
    """A literal for SCAN MATCH (the prefix of a configured hash name may hold glob characters)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
