"""Backups as objects in an S3 bucket: AWS or any S3-compatible server (MinIO, R2, moto…)."""

from __future__ import annotations

import builtins
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import RetriesExceededError

from regina.errors import StorageError

#: Error codes S3-compatible servers use for "no such object" (HEAD/GET variants).
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}

#: Seconds to open a connection to the S3 endpoint, and to wait for any bytes of an answer
#: (botocore's defaults are 60 each). With the attempts below, an unreachable or stalled endpoint
#: fails a call within about 2 minutes at worst, instead of holding a suspend, a restore or a
#: DELETE for several: each of those answers (or is tried again) while storage is down.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
#: Tries per call, the first included (botocore's "standard" retry mode: throttling, 5xx and
#: connection errors, with jittered backoff).
MAX_ATTEMPTS = 3

#: `get_into` downloads with one GET whatever the object's size, its body written to the file in
#: pieces as it arrives, in the calling thread: what `get` sent, at about 1 MiB of memory. boto3's
#: default (parallel ranged GETs of 8 MiB parts in 10 threads) held 40-50 MiB while it restored
#: a 160 MiB backup, and took 4x as long against moto.
ONE_STREAMED_GET = TransferConfig(multipart_threshold=1 << 62, use_threads=False)


class S3Storage:
    """Blob storage in `bucket`, every key under `prefix`; credentials from the usual AWS chain."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        # Path-style addressing: custom endpoints rarely have per-bucket DNS names.
        config = Config(
            s3={"addressing_style": "path"} if endpoint else {},
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=32,
        )
        # A session of our own, not boto3's module-level default: sessions are not thread-safe,
        # clients are, so the one client is shared by every thread/greenlet using this storage.
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def put(self, key: str, data: bytes) -> None:
        """One PutObject: S3 makes a whole object visible at once, never a partial one."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("put", key, exc) from exc

    def get(self, key: str) -> bytes | None:
        """GetObject and read the body; a missing object means no backup."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise self._error("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("get", key, exc) from exc

    def get_into(self, key: str, out: BinaryIO) -> bool:
        """boto3's managed download (`download_fileobj`, ONE_STREAMED_GET): the body written to
        `out` as it arrives, never the whole object in memory, a GET broken midway tried again by
        s3transfer; a missing object means no backup."""
        try:
            self._client.download_fileobj(self.bucket, self.prefix + key, out, Config=ONE_STREAMED_GET)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise self._error("get", key, exc) from exc
        except (BotoCoreError, RetriesExceededError) as exc:
            raise self._error("get", key, exc) from exc
        return True

    def delete(self, key: str) -> None:
        """DeleteObject, which S3 already treats as success when the key is absent."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("delete", key, exc) from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        """ListObjectsV2 through boto3's paginator (1000 keys per page), prefix stripped."""
        keys: builtins.list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(self.prefix) :] for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted(keys)

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def _error(self, op: str, key: str, exc: Exception) -> StorageError:
        """Name the operation, bucket and key so the log line says what failed where."""
        return StorageError(f"s3 storage: {op} {key!r} in bucket {self.bucket!r} failed: {exc}")
