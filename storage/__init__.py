"""Backup storage for suspended instances: pick the adapter the `storage` settings name (SPEC §7).

Adapters are imported only when chosen, so an install without boto3 still runs fs and redis.
"""

from __future__ import annotations

from regina.config import StorageSettings
from regina.errors import ConfigError
from regina.storage import Storage

__all__ = ["Storage", "make_storage"]


def _required(value: str | None, key: str, env: str, kind: str) -> str:
    """Return a required setting, or fail at start naming its config key and environment variable."""
    if not value:
        raise ConfigError(f"storage.{key} is required for type {kind} (set it in the config or {env})")
    return value


def make_storage(settings: StorageSettings, redis_url: str) -> Storage | None:
    """Build the configured adapter (by default `redis` on the cluster's Redis); None when
    `storage.type` is null (backups stay on the worker's disk and nothing is journaled).

    Args:
        settings: the `storage` section of the settings.
        redis_url: the cluster's Redis, used by the `redis` adapter when `storage.url` is unset.

    Returns:
        The adapter, or None when the storage type is null.

    Raises:
        ConfigError: a required key for the chosen type is missing, or its library is not installed.
    """
    if settings.type is None:
        return None
    if settings.type == "fs":
        from storage.fs import FsStorage

        return FsStorage(_required(settings.base_path, "basePath", "REGINA_STORAGE__BASE_PATH", "fs"))
    if settings.type == "s3":
        bucket = _required(settings.bucket, "bucket", "REGINA_STORAGE__BUCKET", "s3")
        try:
            from storage.s3 import S3Storage
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in ("boto3", "botocore"):
                raise
            raise ConfigError("storage.type s3 needs boto3, which is not installed: pip install 'boto3>=1.34'") from exc
        return S3Storage(bucket, settings.prefix, settings.endpoint, settings.region)
    if settings.type == "redis":
        from storage.redis import RedisStorage

        return RedisStorage(settings.url or redis_url, settings.prefix)
    raise ConfigError(f"storage.type {settings.type!r} is not one of fs, s3, redis")
