"""The S3 client gives up on an unreachable or stalled endpoint in bounded time (botocore's own
defaults, 60 s to connect and 60 s per read, held a suspend, a restore or a DELETE for minutes)."""

from __future__ import annotations

from storage import s3
from storage.s3 import S3Storage


def test_the_s3_client_has_bounded_timeouts_and_retries() -> None:
    storage = S3Storage("bucket", endpoint="http://127.0.0.1:9", region="us-east-1")
    try:
        config = storage._client.meta.config
        assert config.connect_timeout == s3.CONNECT_TIMEOUT <= 10
        assert config.read_timeout == s3.READ_TIMEOUT <= 60
        assert config.retries == {"mode": "standard", "total_max_attempts": s3.MAX_ATTEMPTS}
    finally:
        storage.close()
