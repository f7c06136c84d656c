"""Backups as fields of one Redis hash: no extra service when the cluster's Redis has room."""

from __future__ import annotations

import builtins

import redis

from regina import keys
from regina.errors import StorageError

#: Name of the hash holding every blob, after the configured prefix.
HASH_NAME = keys.STORAGE_HASH


class RedisStorage:
    """Blob storage in the hash `<prefix>regina:storage`, one field per key."""

    def __init__(self, url: str, prefix: str = "") -> None:
        self.hash_name = prefix + HASH_NAME
        # Bytes in, bytes out: blobs are binary, so no decode_responses. The client's connection
        # pool makes it safe to share between threads.
        self._client = redis.Redis.from_url(url)

    def put(self, key: str, data: bytes) -> None:
        """HSET replaces the field in one command, so readers see the old or the new blob."""
        try:
            self._client.hset(self.hash_name, key, data)
        except redis.RedisError as exc:
            raise self._error("put", key, exc) from exc

    def get(self, key: str) -> bytes | None:
        """HGET; a missing field means no backup."""
        try:
            value = self._client.hget(self.hash_name, key)
        except redis.RedisError as exc:
            raise self._error("get", key, exc) from exc
        assert value is None or isinstance(value, bytes)  # sync client, no decode_responses
        return value

    def delete(self, key: str) -> None:
        """HDEL, which is a no-op for a missing field."""
        try:
            self._client.hdel(self.hash_name, key)
        except redis.RedisError as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        """HKEYS, filtered here: HSCAN would also send every blob (NOVALUES needs Redis 7.4)."""
        try:
            fields = self._client.hkeys(self.hash_name)
        except redis.RedisError as exc:
            raise self._error("list", prefix, exc) from exc
        assert isinstance(fields, builtins.list)  # sync client
        names = (f.decode() if isinstance(f, bytes) else str(f) for f in fields)
        return sorted(n for n in names if n.startswith(prefix))

    def close(self) -> None:
        """Disconnect the client's connection pool."""
        self._client.close()

    def _error(self, op: str, key: str, exc: Exception) -> StorageError:
        """Name the operation, hash and key so the log line says what failed where."""
        return StorageError(f"redis storage: {op} {key!r} in hash {self.hash_name!r} failed: {exc}")
