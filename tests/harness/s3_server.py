"""An S3 server of the tests' own: moto's ThreadedMotoServer on 127.0.0.1 and a free port.

Server mode (real HTTP), not moto's in-process decorators, so worker processes the tests start
can reach it too. It sets no environment variables: callers pass AWS credentials and region
explicitly or through monkeypatch (moto accepts any credentials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Credentials and region moto accepts; real AWS would reject them, which is the point.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """Start and stop a moto S3 server in a thread. Use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        # Port 0: the OS picks a free port at bind time, so no other process can grab it first.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self._server.start()
        self.port = int(self._server.get_host_and_port()[1])
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self) -> S3Client:
        """A boto3 S3 client for this server with moto's fake credentials (for test setup)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (us-east-1 needs no location constraint) and return its name."""
        client = self.client()
        client.create_bucket(Bucket=name)
        client.close()
        return name

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
